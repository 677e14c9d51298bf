import json

import numpy as np
import pytest

from mm1.cli import main
from mm1.data.world.base import COLOURS
from mm1.eval import probe as probing


def test_ridge_reads_a_linear_label_and_not_a_shuffled_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6))
    y = np.argmax(x[:, :3], axis=1)  # a linear function of the features
    assert probing.ridge_accuracy(x[:400], y[:400], x[400:], y[400:], 3) > 0.9
    shuffled = rng.permutation(y)
    assert probing.ridge_accuracy(x[:400], shuffled[:400], x[400:], shuffled[400:], 3) < 0.5


def test_ridge_with_more_features_than_rows_is_the_same_ridge():
    """Image tokens side by side outnumber the fitted views at real scale; the Gram-matrix form must give the
    weights of the ordinary one (solved here directly at a size where that is still cheap)."""
    rng = np.random.default_rng(1)
    for rows, columns in ((30, 200), (200, 30)):
        x, targets = rng.normal(size=(rows, columns)), np.eye(4)[rng.integers(0, 4, rows)]
        direct = np.linalg.solve(x.T @ x + 10.0 * np.eye(columns), x.T @ targets)
        np.testing.assert_allclose(probing.ridge_weights(x, targets, 10.0), direct, atol=1e-10)


def test_reduce_keeps_the_pooled_rows_and_the_object_cells_across_batches():
    """The probe keeps each view's pooled row and its object cells' tokens, not the grids: the same whichever
    batches the views came in, and a grid that is not square is an error naming its size."""
    scenes = probing.scenes(probing.TRAIN, 0, 10, objects=None)
    rng = np.random.default_rng(2)
    grids = {"encoder": rng.normal(size=(10, 16, 3)), "connector": rng.normal(size=(10, 4, 5))}
    whole = probing.reduce_grids([grids], scenes)
    split = probing.reduce_grids([{k: v[:3] for k, v in grids.items()}, {k: v[3:] for k, v in grids.items()}], scenes)
    for kind in probing.FEATURES:
        np.testing.assert_array_equal(whole.pooled[kind], split.pooled[kind])
        assert [sorted(c) for c in whole.cells[kind]] == [sorted(c) for c in split.cells[kind]]
    np.testing.assert_array_equal(whole.pooled["encoder"], grids["encoder"].mean(1))
    assert whole.pooled["connector"].shape == (10, 20) and whole.sides == {"encoder": 4, "connector": 2}
    first = next(iter(whole.cells["encoder"][0]))
    obj, feature = whole.cells["encoder"][0][first]
    assert obj in scenes[0].objects
    np.testing.assert_array_equal(feature, grids["encoder"][0, first])
    with pytest.raises(ValueError, match="12 tokens per view is not square"):
        probing.reduce_grids([{"encoder": grids["encoder"][:, :12], "connector": grids["connector"]}], scenes)


def test_features_that_hold_only_colour_fail_shape_on_held_out_pairs(monkeypatch):
    """The probe's held-out design: each colour's held-out shape never occurs in the fitted scenes, so features that
    carry colour alone predict colour perfectly and shape never (the colour -> shape shortcut scores 0)."""
    def object_colour(image) -> tuple[int, ...]:
        pixels = np.asarray(image).reshape(-1, 3)
        return tuple(int(v) for v in pixels[np.ptp(pixels, axis=1) > 60][0])  # backgrounds spread < 40 over RGB

    def colour_only(model, images):
        one_hot = np.eye(len(COLOURS))[[list(COLOURS.values()).index(object_colour(im)) for im in images]]
        grid = np.repeat(one_hot[:, None], 16, axis=1)  # every token of the view holds it
        yield {"encoder": grid, "connector": grid}

    monkeypatch.setattr(probing, "features", colour_only)
    result = probing.probe(None, n_fit=200, n_test=100)
    assert result["colour"]["encoder"] == 1.0
    assert result["shape"]["encoder"] == 0.0 < result["shape"]["majority"]
    # On new scenes of the fitted pairs colour narrows shape to the four seen with it, and no further.
    assert 0.0 < result["shape"]["encoder_seen"] < 0.5 and result["colour"]["encoder_seen"] == 1.0


def colour_counts(image, side: int) -> np.ndarray:
    """(side * side, colours): each world colour's pixels in each cell of a side x side grid over the image padded
    to a square at its top-left, as the views are (every canvas side divides by 4)."""
    pixels = np.asarray(image)
    extent = max(pixels.shape[:2])
    square = np.zeros((extent, extent, 3), np.uint8)  # black is no world colour
    square[:pixels.shape[0], :pixels.shape[1]] = pixels
    matches = (square[:, :, None, :] == np.array(list(COLOURS.values()))).all(-1)
    cell = extent // side
    return matches.reshape(side, cell, side, cell, -1).sum((1, 3)).reshape(side * side, -1).astype(float)


def test_token_probe_tells_local_features_from_features_spread_over_the_view(monkeypatch):
    """Tokens that hold their own cell's colours read the colour at the token and not another object's; tokens
    that each hold the whole view's colours cannot tell the two apart."""
    def local_and_spread(model, images):
        local = np.stack([colour_counts(im, 4) for im in images])
        yield {"encoder": local, "connector": np.repeat(local.sum(1, keepdims=True), 16, axis=1)}

    monkeypatch.setattr(probing, "features", local_and_spread)
    result = probing.probe(None, n_fit=200, n_test=100)
    here, elsewhere = result["colour at its token"], result["colour of another object"]
    assert here["encoder"] > 0.9 and here["encoder_seen"] > 0.9 and elsewhere["encoder"] < 0.3
    assert here["connector"] < 0.6 and here["connector_seen"] < 0.6  # the view's colours, not which is here
    assert 0.1 < here["majority"] < 0.2  # eight colours


def test_letter_probe_reads_letters_from_features_that_hold_their_shape(monkeypatch):
    """Features that hold the letter's ink, centred on it (what an encoder that reads would give), tell the 26
    capitals apart at the held-out font size; features that hold only the sign's colour do not."""
    def centred_ink(model, images):
        crops = []
        for image in images:
            ink = np.pad(np.asarray(image).min(-1) > 200, 16)  # the letters are white, no sign colour is
            ys, xs = np.nonzero(ink)
            y, x = int(ys.mean()) - 16, int(xs.mean()) - 16
            crops.append(ink[y:y + 32, x:x + 32].reshape(1, -1).astype(float))
        grid = np.stack(crops)  # one token per view
        yield {"encoder": grid, "connector": grid}

    def sign_colour(model, images):
        grid = np.stack([np.asarray(image)[:1, :1].reshape(1, 3).astype(float) for image in images])
        yield {"encoder": grid, "connector": grid}

    monkeypatch.setattr(probing, "features", centred_ink)
    reading = probing.letter_probe(None, 600, 300, 0)
    assert reading["encoder"] > 0.8 and reading["encoder_seen"] > 0.95
    monkeypatch.setattr(probing, "features", sign_colour)
    blind = probing.letter_probe(None, 600, 300, 0)
    assert blind["encoder"] < 0.15 and blind["connector_seen"] < 0.15
    assert blind["majority"] < 0.1  # 26 letters


def test_probe_command_on_a_saved_model(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "probe.json"
    assert main(["probe", str(tmp_path / "m"), "--fit", "40", "--test", "20", "--out", str(out)]) == 0
    assert "| shape |" in capsys.readouterr().out
    probes = json.loads(out.read_text())["probes"]
    assert set(probes) == set(probing.ATTRIBUTES) | set(probing.TOKEN_ATTRIBUTES) | {"letter"}
    for row in probes.values():
        assert set(row) == {"encoder", "connector", "encoder_seen", "connector_seen", "majority"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
