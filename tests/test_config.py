from pathlib import Path

import pytest

from mm1.config import ConfigError, config_from_dict, load_config, save_config

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(recipe):
    cfg = load_config(recipe)
    assert cfg.stages, recipe


def test_override_changes_typed_value():
    cfg = load_config(RECIPES[0], ["model.connector.tokens=64", "stages.0.lr=0.5", "model.llm.tie_embeddings=true"])
    assert cfg.model.connector.tokens == 64 and cfg.stages[0].lr == 0.5 and cfg.model.llm.tie_embeddings is True


@pytest.mark.parametrize("overrides, message", [
    (["model.connectr.tokens=16"], "model.connectr: unknown key"),
    (["stages.0.steps=abc"], "stages.0.steps: Input should be a valid integer"),
    (["model.connector.tokens=15"], "connector.tokens=15 must be a square"),
    (["model.connector.type=perceiver"], "unknown connector 'perceiver'"),
    (["stages.0.warmup_steps=100000"], "warmup_steps=100000 exceeds steps"),
    (["stages.0.trainable=[encoder, vision]"], "stages.0.trainable.1"),
    (["model.encoder.image_size=30"], "image_size 30 is not a multiple of patch_size"),
    (["noequals"], "not of the form key.sub=value"),
])
def test_bad_config_names_file_and_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(RECIPES[0], overrides)
    assert message in str(err.value)
    if "form" not in message:
        assert str(RECIPES[0]) in str(err.value)


def test_missing_and_malformed_recipe(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path):
    # the default's connector (the longer mode's grid position embedding rules attention pooling out)
    cfg = load_config(RECIPES[0].with_name("tiny.yaml"), ["model.connector.type=attn-pool"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_moe_block_needs_moe_family():
    from mm1.model.llm import hf_llm_config

    cfg = config_from_dict({"model": {"llm": {"type": "llama", "moe": {"experts": 4}}}})
    with pytest.raises(ValueError, match="llama.*dense"):
        hf_llm_config(cfg.model.llm, 100)
    cfg = config_from_dict({"model": {"llm": {"type": "mixtral", "moe": {"experts": 4, "every": 2}}}})
    with pytest.raises(ValueError, match="every layer"):
        hf_llm_config(cfg.model.llm, 100)
