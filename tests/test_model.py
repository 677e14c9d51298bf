import pytest
import torch

from conftest import CONNECTORS, CORPUS, assistant, image, tiny_config, tiny_model, user
from mm1 import load
from mm1.config import ConfigError, config_from_dict
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import MM1Model
from mm1.data.processor import IGNORE_INDEX
from mm1.model.connector import output_tokens
from mm1.train.trainer import optimizer_step
from mm1.train.optim import build_optimizer, set_trainable


def chat_batch(model, n_images=1, answer="a red circle."):
    enc = model.processor.encode_chat([user("what is it?", n_images), assistant(answer)], [image()] * n_images)
    text = model.processor.encode_text("3 plus 4 is 7.")
    return model.processor.collate([enc, text])


@pytest.mark.parametrize("connector", CONNECTORS)
@pytest.mark.parametrize("view_size", [32, 48, 16])  # native, and position-embedding interpolation up and down
def test_token_counts_match_features(connector, view_size):
    model = tiny_model(connector, image={"size": view_size}).eval()
    grid = view_size // 8
    expected = output_tokens(model.config.model.connector, grid)
    assert expected == (grid * grid if connector == "mlp" else 4)
    for width, height in [(40, 24), (24, 40), (32, 32), (1, 300)]:
        assert model.processor.image_token_count(width, height) == expected
        enc = model.processor.encode_chat([user("hi")], [image(width, height)])
        assert sum(t == model.image_token_id for t in enc.input_ids) == expected
        features = model.image_features(enc.pixel_values)
        assert features.shape == (1, expected, model.llm.config.hidden_size)
        model(**model.processor.collate([enc]))  # the scatter accepts exactly these features


@pytest.mark.parametrize("connector", ["c-abstractor", "avg-pool", "mlp"])
def test_position_embedding_marks_each_token_with_its_place(connector):
    cfg = tiny_config(connector, image={"size": 48})  # mlp: 36 tokens, the others 4
    cfg.model.connector.position_embedding = True
    torch.manual_seed(0)
    model = MM1Model(cfg, build_tokenizer(cfg.tokenizer, CORPUS))
    pixels = torch.randn(3, 3, 48, 48)
    tokens = model.image_features(pixels)
    plain = model.connector.tokens(model.encoder(pixels))
    added = tokens - plain
    # The same embedding for a place in every view, a different one for every place in the view.
    assert torch.allclose(added, added[:1].expand_as(added), atol=1e-6)
    assert torch.cdist(added[0], added[0]).add(torch.eye(added.shape[1])).min() > 1e-3
    tokens.sum().backward()
    assert model.connector.position.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("connector", CONNECTORS)
def test_output_norm_starts_image_tokens_at_the_text_tokens_scale(connector):
    cfg = tiny_config(connector)
    cfg.model.connector.output_norm = True
    torch.manual_seed(0)
    model = MM1Model(cfg, build_tokenizer(cfg.tokenizer, CORPUS))
    tokens = model.image_features(torch.randn(2, 3, 32, 32) * 5)
    text_rms = model.llm.get_input_embeddings().weight.pow(2).mean().sqrt()
    torch.testing.assert_close(tokens.pow(2).mean(-1).sqrt(), text_rms.expand(tokens.shape[:2]), rtol=1e-3, atol=0)


def test_position_embedding_refuses_query_tokens():
    with pytest.raises(ConfigError, match="position_embedding needs tokens laid out on the view's grid"):
        config_from_dict({"model": {"connector": {"type": "attn-pool", "position_embedding": True}}})


@pytest.mark.parametrize("connector,moe", [(c, False) for c in CONNECTORS] + [("c-abstractor", True)])
def test_gradient_reaches_every_trainable_part(connector, moe):
    model = tiny_model(connector, moe)
    out = model(**chat_batch(model, n_images=2))
    if moe:
        assert out.balance_loss > 0 and out.z_loss > 0
        assert torch.isclose(out.loss, out.lm_loss + 0.01 * out.balance_loss + 0.001 * out.z_loss)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_text_only_batch_trains_without_images():
    model = tiny_model()
    batch = model.processor.collate([model.processor.encode_text("a blue square."),
                                     model.processor.encode_chat([{"role": "user", "content": "hi"}, assistant("ok")])])
    assert "pixel_values" not in batch
    optimizer = build_optimizer(model, model.config.stages[0])
    encoder_before = [p.clone() for p in model.encoder.parameters()]
    assert optimizer_step(model, [batch], optimizer, model.config.stages[0]).loss > 0
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters()))


def test_frozen_modules_stay_untouched():
    model = tiny_model()
    stage = model.config.stages[0]
    stage.trainable = ["connector"]
    set_trainable(model, stage)
    before = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, stage)
    for _ in range(2):
        optimizer_step(model, [chat_batch(model)], optimizer, stage)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(n.startswith("connector.") for n in changed)


def test_training_reduces_loss():
    model = tiny_model()
    stage = model.config.stages[0]
    stage.lr = 3e-3
    batch = chat_batch(model)
    optimizer = build_optimizer(model, stage)
    losses = [optimizer_step(model, [batch], optimizer, stage).loss for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_weights_that_do_not_match_the_config_are_named(tmp_path):
    tiny_model().save_pretrained(tmp_path / "m")
    config = tmp_path / "m" / "config.yaml"
    config.write_text(config.read_text().replace("position_embedding: false", "position_embedding: true"))
    with pytest.raises(ValueError, match=r"does not match the config: missing \['connector.position.proj.bias'"):
        load(tmp_path / "m")


def test_conv_stem_gives_the_same_tokens_and_saves_with_the_model(tmp_path):
    cfg = tiny_config(image={"size": 48})
    cfg.model.encoder.stem = "conv"
    torch.manual_seed(0)
    model = MM1Model(cfg, build_tokenizer(cfg.tokenizer, CORPUS)).eval()
    stem = model.encoder.vision.embeddings.patch_embedding
    assert [m.stride for m in stem if isinstance(m, torch.nn.Conv2d)] == [(2, 2)] * 3 + [(1, 1)]  # 8 = 2 x 2 x 2
    for view_size in (48, 32, 16):  # interpolated position embeddings, as with the linear stem
        pixels = torch.randn(2, 3, view_size, view_size)
        assert model.encoder(pixels).shape == (2, (view_size // 8) ** 2, 32)
    model.save_pretrained(tmp_path / "m")
    restored = load(tmp_path / "m")
    batch = chat_batch(model)
    assert torch.equal(model(**batch).logits, restored(**batch).logits)
    assert restored.config.model.encoder.stem == "conv"
    encoder = {"image_size": 32, "patch_size": 8, "stem": "conv"}
    assert config_from_dict({"model": {"encoder": encoder | {"patch_size": 4}}}).model.encoder.stem == "conv"
    for change, error in [({"path": "clip-dir"}, "brings its own linear patch embedding"),
                          ({"patch_size": 6, "image_size": 24}, "power of two; got 6")]:
        with pytest.raises(ConfigError, match=error):
            config_from_dict({"model": {"encoder": encoder | change}})


@pytest.mark.parametrize("connector,moe", [(c, False) for c in CONNECTORS] + [("c-abstractor", True)])
def test_save_load_is_bit_exact(tmp_path, connector, moe):
    model = tiny_model(connector, moe).eval()
    model.save_pretrained(tmp_path / "m")
    restored = load(tmp_path / "m")
    batch = chat_batch(model)
    assert torch.equal(model(**batch).logits, restored(**batch).logits)
    assert restored.config == model.config
    assert restored.processor.tokenizer.get_vocab() == model.processor.tokenizer.get_vocab()
    assert not list(tmp_path.glob("m/*.bin")) and not list(tmp_path.glob("m/*.pt"))  # nothing pickled


@pytest.mark.parametrize("moe", [False, True])
def test_kv_cache_generation_equals_recomputation(moe):
    model = tiny_model(moe=moe, seed=3).eval()
    p = model.processor
    prompts = [p.encode_chat([user("what is it?", 2)], [image(), image(20, 50, (0, 0, 200))], add_generation_prompt=True),
               p.encode_chat([user("colour?")], [image(64, 16)], add_generation_prompt=True),
               p.encode_chat([{"role": "user", "content": "3 plus 4?"}], add_generation_prompt=True)]
    batch = p.collate(prompts, padding_side="left")
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    cached = model.generate(*args, max_new_tokens=12, eos_token_id=-1)
    full = model.generate(*args, max_new_tokens=12, eos_token_id=-1, use_cache=False)
    assert cached.shape == (3, 12)
    assert torch.equal(cached, full)
    # Left padding does not change a prompt's continuation.
    alone = p.collate(prompts[1:2], padding_side="left")
    single = model.generate(alone["input_ids"], alone["attention_mask"], alone["pixel_values"],
                            max_new_tokens=12, eos_token_id=-1)
    assert torch.equal(single[0], cached[1])


def test_sampling_is_seeded():
    model = tiny_model().eval()
    batch = model.processor.collate([model.processor.encode_chat([user("hi")], [image()], add_generation_prompt=True)])
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    runs = [model.generate(*args, max_new_tokens=8, temperature=1.0, top_p=0.9, eos_token_id=-1,
                           generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_image_token_feature_mismatch_raises_with_counts(model):
    batch = chat_batch(model)
    ids = batch["input_ids"].clone()
    first = (ids == model.image_token_id).nonzero()[0]
    ids[first[0], first[1]] = 0
    with pytest.raises(ValueError, match=r"the text has 3 image tokens but the 1 image views give 4 features"):
        model(ids, batch["pixel_values"], batch["attention_mask"])
    with pytest.raises(ValueError, match="4 image tokens but no images"):
        model(batch["input_ids"], None, batch["attention_mask"])
    with pytest.raises(ValueError, match=r"1 <image> markers but 2 images"):
        model.processor.encode_chat([user("hi")], [image(), image()])


@pytest.mark.parametrize("template", ["chatml", "vicuna"])
def test_labels_cover_exactly_the_assistant_turns(template):
    model = tiny_model(tokenizer={"vocab_size": 300, "chat_template": template})
    p = model.processor
    messages = [{"role": "system", "content": "Be brief."}, user("what is it?"), assistant("a red circle."),
                {"role": "user", "content": "and?"}, assistant("3 plus 4 is 7.")]
    enc = p.encode_chat(messages, [image()])
    targets = [t for t in enc.labels if t != IGNORE_INDEX]
    eos = p.tokenizer.eos_token
    assert p.tokenizer.decode(targets) == f"a red circle.{eos}3 plus 4 is 7.{eos}"
    # Exactly the assistant text: every labelled token lies inside an assistant turn and vice versa.
    labelled = p.tokenizer.decode([t for t, l in zip(enc.input_ids, enc.labels) if l == IGNORE_INDEX])
    assert "a red circle" not in labelled and "Be brief." in labelled and "what is it?" in labelled
    # Every labelled position carries its own token id, and image tokens are never targets.
    assert all(label in (IGNORE_INDEX, tok) for tok, label in zip(enc.input_ids, enc.labels))
    assert all(label == IGNORE_INDEX for tok, label in zip(enc.input_ids, enc.labels) if tok == model.image_token_id)


@pytest.mark.parametrize("connector,moe", [(c, False) for c in CONNECTORS] + [("attn-pool", True)])
def test_build_train_save_load_generate(tmp_path, connector, moe):
    model = tiny_model(connector, moe)
    stage = model.config.stages[0]
    optimizer = build_optimizer(model, stage)
    before = model.llm.lm_head.weight.clone()
    optimizer_step(model, [chat_batch(model)], optimizer, stage)
    assert not torch.equal(before, model.llm.lm_head.weight)
    model.eval().save_pretrained(tmp_path / "m")
    restored = load(tmp_path / "m")
    reply = restored.chat([user("what is it?")], [image()], max_new_tokens=5)
    assert reply == model.chat([user("what is it?")], [image()], max_new_tokens=5)
    assert isinstance(reply, str)


def test_on_tokens_streams_every_step_and_can_stop_generation(model):
    batch = model.processor.collate([model.processor.encode_chat([user("hi")], [image()], add_generation_prompt=True)])
    args = (batch["input_ids"], batch["attention_mask"], batch["pixel_values"])
    streamed = []
    full = model.generate(*args, max_new_tokens=6, eos_token_id=-1, on_tokens=streamed.append)
    assert torch.equal(torch.stack(streamed, dim=1), full)
    stopped = model.generate(*args, max_new_tokens=6, eos_token_id=-1, on_tokens=lambda t: len(t) > 0)
    assert torch.equal(stopped, full[:, :1])
