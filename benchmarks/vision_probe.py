"""Does the LLM read the image?  Caption loss with the right images vs shuffled ones while pre-training on captions.

The embedded default's model (`recipes/tiny.yaml`) is trained on the demo world's captions only (its pre-training
stage settings) from two starts: a random encoder, and the encoder of the demo's contrastive stage
(`runs/tiny/encoder/model`, written by `mm1 demo`).  Every 50 steps the loss on two held batches is computed with the
right images and with the images shuffled among the samples: equal losses mean the model ignores the image.
"""

from __future__ import annotations

import time

from common import REPO, Bench, cli, table

CAPTIONS = "stages.pretrain.data=[{name: captions, format: webdataset, path: 'runs/tiny/world/captions/train-*.tar'}]"


def probe(steps: int, encoder_from: str | None) -> list[dict]:
    import torch
    from transformers import AutoTokenizer

    from mm1.config import load_config
    from mm1.data.mixture import StageData
    from mm1.model.mllm import MM1Model
    from mm1.train.optim import build_optimizer, build_scheduler
    from mm1.train.trainer import optimizer_step

    cfg = load_config(REPO / "recipes" / "tiny.yaml", [CAPTIONS])
    stage = next(s for s in cfg.stages if s.name == "pretrain")
    torch.manual_seed(0)
    model = MM1Model(cfg, AutoTokenizer.from_pretrained(REPO / "runs" / "tiny" / "tokenizer"))
    if encoder_from:
        model.encoder.load_state_dict(MM1Model.from_pretrained(encoder_from).encoder.state_dict())
    optimizer, data = build_optimizer(model, stage), StageData(stage, model.processor, seed=1)
    scheduler = build_scheduler(optimizer, stage)
    held = [next(StageData(stage, model.processor, seed=99)) for _ in range(2)]
    shuffle = torch.Generator().manual_seed(0)

    def losses() -> tuple[float, float]:
        model.eval()
        right = shuffled = 0.0
        with torch.no_grad():
            for batch in held:
                text = {k: batch[k] for k in ("input_ids", "labels", "position_ids")}
                order = torch.randperm(batch["pixel_values"].shape[0], generator=shuffle)
                right += model(pixel_values=batch["pixel_values"], **text).loss.item() / len(held)
                shuffled += model(pixel_values=batch["pixel_values"][order], **text).loss.item() / len(held)
        model.train()
        return right, shuffled

    rows, start = [], time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        optimizer_step(model, [next(data)], optimizer, stage)
        scheduler.step()
        if step % 50 == 0:
            right, shuffled = losses()
            rows.append({"encoder": "contrastive stage" if encoder_from else "random", "step": step,
                         "loss, right images": round(right, 3), "loss, shuffled images": round(shuffled, 3),
                         "gap": round(shuffled - right, 3), "s": round(time.perf_counter() - start)})
    return rows


def main() -> None:
    p = cli(__doc__)
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args()
    bench = Bench("vision_probe", args)
    steps = 100 if args.quick else args.steps
    rows = probe(steps, None) + probe(steps, str(REPO / "runs" / "tiny" / "encoder" / "model"))
    text = table(rows, "caption pre-training from a random vs a contrastively trained encoder")
    print(text)
    bench.save({"rows": rows}, [text])


if __name__ == "__main__":
    main()
