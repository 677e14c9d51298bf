import json

import numpy as np

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


def test_features_that_hold_only_colour_fail_shape_on_held_out_pairs(monkeypatch):
    """The probe's held-out design: each colour's held-out shape never occurs in the fitted scenes, so features that
    carry colour alone predict colour perfectly and shape never (the colour -> shape shortcut scores 0)."""
    def object_colour(image) -> tuple[int, ...]:
        pixels = np.asarray(image).reshape(-1, 3)
        return tuple(int(v) for v in pixels[np.ptp(pixels, axis=1) > 60][0])  # backgrounds spread < 40 over RGB

    def colour_only(model, images):
        one_hot = np.eye(len(COLOURS))[[list(COLOURS.values()).index(object_colour(im)) for im in images]]
        grid = np.repeat(one_hot[:, None], 16, axis=1)  # every token of the view holds it
        return {"encoder": grid, "connector": grid}

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
        return {"encoder": local, "connector": np.repeat(local.sum(1, keepdims=True), 16, axis=1)}

    monkeypatch.setattr(probing, "features", local_and_spread)
    result = probing.probe(None, n_fit=200, n_test=100)
    here, elsewhere = result["colour at its token"], result["colour of another object"]
    assert here["encoder"] > 0.9 and here["encoder_seen"] > 0.9 and elsewhere["encoder"] < 0.3
    assert here["connector"] < 0.6 and here["connector_seen"] < 0.6  # the view's colours, not which is here
    assert 0.1 < here["majority"] < 0.2  # eight colours


def test_probe_command_on_a_saved_model(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "probe.json"
    assert main(["probe", str(tmp_path / "m"), "--fit", "40", "--test", "20", "--out", str(out)]) == 0
    assert "| shape |" in capsys.readouterr().out
    probes = json.loads(out.read_text())["probes"]
    assert set(probes) == set(probing.ATTRIBUTES) | set(probing.TOKEN_ATTRIBUTES)
    for row in probes.values():
        assert set(row) == {"encoder", "connector", "encoder_seen", "connector_seen", "majority"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
