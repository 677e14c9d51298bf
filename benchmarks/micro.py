"""Micro-benchmarks behind the fixes RESULTS.md proposes (src/ unchanged; each alternative is written here).

1. AdamW step on the 100m model's parameters (235M, random gradients): PyTorch's default on CPU (a per-tensor
   loop), foreach=True, fused=True; `mm1.train.optim` builds the default.
2. View tensors at 672 px (the 10 views of a 3x3 split): `mm1.data.image.to_tensor` per view (numpy float32,
   normalise, transpose copy) vs one torch pass over the stacked uint8 views (same values, checked).
"""

from __future__ import annotations

import numpy as np
import torch

from common import Bench, World, build_model, cli, make_config, median, synthetic_image, table, timed


def adamw_rows(quick: bool) -> list[dict]:
    world = World()
    tokenizer = world.tokenizer(4096)
    params = [p for p in build_model(make_config("100m", tokenizer), tokenizer).parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    rows = []
    for name, options in (("default (for-loop)", {}), ("foreach=True", {"foreach": True}),
                          ("fused=True", {"fused": True})):
        optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), **options)
        times = timed(optimizer.step, 2 if quick else 5, warmup=1)
        rows.append({"AdamW, 235M fp32 params": name, "step s (median)": median(times)})
    return rows


def to_tensor_torch(views, mean, std) -> torch.Tensor:
    """All views at once: uint8 HWC -> float CHW, normalised, in torch."""
    x = torch.from_numpy(np.stack([np.asarray(v) for v in views])).permute(0, 3, 1, 2).float().div_(255)
    return x.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))


def to_tensor_rows(quick: bool) -> list[dict]:
    import random

    from mm1.config import EncoderConfig
    from mm1.data.image import to_tensor

    enc = EncoderConfig()
    views = [synthetic_image(random.Random(i), 672, 672) for i in range(10)]
    current = lambda: torch.stack([to_tensor(v, enc.image_mean, enc.image_std) for v in views])
    proposed = lambda: to_tensor_torch(views, enc.image_mean, enc.image_std)
    torch.testing.assert_close(current(), proposed(), atol=1e-5, rtol=1e-5)
    return [{"10 views of 672 px": name, "ms (best)": min(timed(fn, 3 if quick else 10)) * 1e3}
            for name, fn in (("mm1 to_tensor per view + stack", current), ("one torch pass (proposed)", proposed))]


def main() -> None:
    args = cli(__doc__).parse_args()
    bench = Bench("micro", args)
    adamw, views = adamw_rows(args.quick), to_tensor_rows(args.quick)
    tables = [table(adamw, "AdamW step"), table(views, "view tensors")]
    bench.save({"adamw": adamw, "to_tensor": views}, tables)


if __name__ == "__main__":
    main()
