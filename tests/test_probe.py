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
        return {"encoder": one_hot, "connector": one_hot}

    monkeypatch.setattr(probing, "features", colour_only)
    result = probing.probe(None, n_fit=200, n_test=100)
    assert result["colour"]["encoder"] == 1.0
    assert result["shape"]["encoder"] == 0.0 < result["shape"]["majority"]
    # On new scenes of the fitted pairs colour narrows shape to the four seen with it, and no further.
    assert 0.0 < result["shape"]["encoder_seen"] < 0.5 and result["colour"]["encoder_seen"] == 1.0


def test_probe_command_on_a_saved_model(model, tmp_path, capsys):
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "probe.json"
    assert main(["probe", str(tmp_path / "m"), "--fit", "40", "--test", "20", "--out", str(out)]) == 0
    assert "| shape |" in capsys.readouterr().out
    probes = json.loads(out.read_text())["probes"]
    assert set(probes) == set(probing.ATTRIBUTES)
    for row in probes.values():
        assert set(row) == {"encoder", "connector", "encoder_seen", "connector_seen", "majority"}
        assert all(0.0 <= v <= 1.0 for v in row.values())
