"""`mm1 export`: an mm1 model with the mlp connector becomes a transformers LLaVA checkpoint that computes the same
logits, generates the same greedy tokens and whose LlavaProcessor prepares the same inputs; other connectors fail
with a clear message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from conftest import CORPUS
from mm1.cli import main
from mm1.config import config_from_dict
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import MM1Model


def tiny(encoder: str = "clip", connector: str = "mlp", tie: bool = False,
         connector_extras: dict | None = None, encoder_extras: dict | None = None) -> MM1Model:
    cfg = config_from_dict({"model": {
        "encoder": {"type": encoder, "image_size": 32, "patch_size": 8, "hidden_size": 32, "layers": 3, "heads": 2,
                    "intermediate_size": 64, "feature_layer": -2, **(encoder_extras or {})},
        "connector": {"type": connector, "tokens": 4, "mlp_depth": 2, **(connector_extras or {})},
        "llm": {"hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64, "max_positions": 512,
                "tie_embeddings": tie}}})
    torch.manual_seed(0)
    model = MM1Model(cfg, build_tokenizer(cfg.tokenizer, CORPUS)).eval()
    with torch.no_grad():  # transformers' init leaves biases at 0 and norms at 1: spread everything out
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1 if name.endswith("weight") and p.dim() == 1 else 0))
    return model


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def export(model: MM1Model, tmp_path) -> LlavaForConditionalGeneration:
    model.save_pretrained(tmp_path / "mm1")
    assert main(["export", str(tmp_path / "mm1"), str(tmp_path / "llava")]) == 0
    llava, info = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava", output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    return llava.eval()


@pytest.mark.parametrize("encoder, tie", [("clip", False), ("siglip", False), ("clip", True)])
@torch.no_grad()
def test_llava_export_matches_logits_and_greedy_tokens(tmp_path, encoder, tie):
    model = tiny(encoder, tie=tie)
    llava = export(model, tmp_path)
    assert llava.config.vision_config.num_hidden_layers == 2  # 3 layers, read at -2: the kept, truncated tower
    assert llava.config.vision_feature_select_strategy == ("default" if encoder == "clip" else "full")

    proc = model.processor
    samples = [proc.encode_chat(ask("what is it?"), [picture(0, (40, 24))], add_generation_prompt=True),
               proc.encode_chat(ask("and this one, on the left?"), [picture(1, (32, 32))], add_generation_prompt=True)]
    batch = proc.collate(samples, padding_side="left")
    ids, mask, pixels = batch["input_ids"], batch["attention_mask"], batch["pixel_values"]
    assert mask[0].sum() < mask.shape[1]  # a left-padded row
    ours = model(ids, pixel_values=pixels, attention_mask=mask).logits
    theirs = llava(input_ids=ids, pixel_values=pixels, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(theirs[real], ours[real], atol=1e-5, rtol=1e-5)

    eos = proc.tokenizer.eos_token_id
    ours = model.generate(ids, mask, pixels, max_new_tokens=8, eos_token_id=eos)
    theirs = llava.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8,
                            do_sample=False)[:, ids.shape[1]:]
    for row_ours, row_theirs in zip(ours.tolist(), theirs.tolist()):
        n = row_ours.index(eos) + 1 if eos in row_ours else len(row_ours)
        assert n > 1 and row_theirs[:n] == row_ours[:n]


def test_llava_processor_prepares_our_inputs(tmp_path):
    """Chat template (OpenAI-style parts), image token expansion and pixels agree for a square image."""
    model = tiny()
    export(model, tmp_path)
    processor = LlavaProcessor.from_pretrained(tmp_path / "llava")
    image = picture(2, (48, 48))
    text = processor.apply_chat_template(ask("what colour?"), add_generation_prompt=True)
    theirs = processor(text=text, images=[image], return_tensors="pt")
    ours = model.processor.encode_chat(ask("what colour?"), [image], add_generation_prompt=True)
    assert theirs["input_ids"][0].tolist() == ours.input_ids
    torch.testing.assert_close(theirs["pixel_values"], ours.pixel_values, atol=1e-6, rtol=0)  # both PIL bicubic


@pytest.mark.parametrize("connector", ["c-abstractor", "avg-pool", "attn-pool"])
def test_other_connectors_fail_clearly(tmp_path, capsys, connector):
    tiny(connector=connector).save_pretrained(tmp_path / "mm1")
    assert main(["export", str(tmp_path / "mm1"), str(tmp_path / "llava")]) == 2
    err = capsys.readouterr().err
    assert f"the connector is '{connector}'" in err and "mm1 serve" in err
    assert not (tmp_path / "llava").exists()


@pytest.mark.parametrize("extra,named", [("position_embedding", "a grid position embedding"),
                                         ("output_norm", "an output norm")])
def test_connector_extras_fail_clearly(tmp_path, capsys, extra, named):
    tiny(connector_extras={extra: True}).save_pretrained(tmp_path / "mm1")
    assert main(["export", str(tmp_path / "mm1"), str(tmp_path / "llava")]) == 2
    assert f"the connector adds {named}" in capsys.readouterr().err and not (tmp_path / "llava").exists()


def test_conv_stem_fails_clearly(tmp_path, capsys):
    tiny(encoder_extras={"stem": "conv"}).save_pretrained(tmp_path / "mm1")
    assert main(["export", str(tmp_path / "mm1"), str(tmp_path / "llava")]) == 2
    assert "the encoder has a conv stem" in capsys.readouterr().err and not (tmp_path / "llava").exists()
