"""Model bundles: atomic writes, checksums, weights-only loading, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from ddasr_nipype import bundle as bundle_mod
from ddasr_nipype.bundle import load_bundle, save_bundle
from ddasr_nipype.errors import ChecksumMismatchError, ModelBundleError
from ddasr_nipype.models import DSN, DSNConfig, GeneratorConfig, SRGenerator

TINY_G = GeneratorConfig(num_feat=8, num_grow_ch=4, num_bottleneck_blocks=1)
TINY_DSN = DSNConfig(d_model=32, nhead=2, dim_feedforward=64, num_encoder_layers=1, num_decoder_layers=1)
PRE = {"plane": "sagittal", "scale": 2, "normalization": {"percentiles": [0.5, 99.5]}}


def _save(path, with_dsn=False, **extra):
    torch.manual_seed(0)
    gen = SRGenerator(TINY_G)
    kwargs = {}
    if with_dsn:
        kwargs = {"dsn_state": DSN(TINY_DSN).state_dict(), "dsn_config": TINY_DSN}
    saved = save_bundle(
        path, name="tiny-test", generator_state=gen.state_dict(), generator_config=TINY_G,
        preprocessing=PRE, backbone={"source": "random", "seed": 0},
        training={"note": "untrained test fixture"}, **kwargs, **extra,
    )
    return gen, saved


def test_round_trip_rebuilds_identical_models(tmp_path):
    gen, saved = _save(tmp_path / "b", with_dsn=True)
    loaded = load_bundle(tmp_path / "b")
    assert loaded.name == "tiny-test" and loaded.scale == 2 and loaded.plane == "sagittal"
    assert loaded.sha256 == bundle_mod.sha256sum(tmp_path / "b" / "srn.pt")
    assert loaded.generator_config == TINY_G and loaded.dsn_config == TINY_DSN
    x = torch.rand(1, 1, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded.load_generator()(x), gen.eval()(x))
    assert isinstance(loaded.load_dsn(), DSN)
    sums = (tmp_path / "b" / "SHA256SUMS").read_text()
    assert f"{loaded.sha256}  srn.pt" in sums
    assert "tiny-test" in (tmp_path / "b" / "MODEL_CARD.md").read_text()
    # weights are plain tensors: loadable with weights_only=True
    state = torch.load(tmp_path / "b" / "srn.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_recommended_output_settings_are_recorded_and_checked(tmp_path):
    _, plain = _save(tmp_path / "plain")
    assert plain.output == {} and "output" not in plain.manifest  # older bundles: the network alone
    _, recommends = _save(tmp_path / "blend", output={"strength": 0.5, "background": "input"})
    assert recommends.output == {"strength": 0.5, "background": "input", "slice_denoise": 0.0,
                                 "projection": "none"}
    assert load_bundle(tmp_path / "blend").manifest["output"] == recommends.output
    _, partial = _save(tmp_path / "partial", output={"background": "input", "slice_denoise": 2,
                                                     "projection": "kspace"})
    # completed with the defaults
    assert partial.output == {"strength": 1.0, "background": "input", "slice_denoise": 2.0,
                              "projection": "kspace"}
    for bad, message in (({"strength": 2.0}, "strength must be between 0 and 1"),
                         ({"projection": "sinc"}, "projection must be one of"),
                         ({"slice_denoise": -1.0}, "slice_denoise must be a finite number >= 0")):
        with pytest.raises(ValueError, match=message):
            _save(tmp_path / "bad", output=bad)
        assert not (tmp_path / "bad").exists()


def test_overwrite_is_atomic_and_leaves_no_temporaries(tmp_path):
    _save(tmp_path / "b")
    _save(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_tampered_weights_are_refused(tmp_path):
    _save(tmp_path / "b")
    weights = tmp_path / "b" / "srn.pt"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="does not match"):
        load_bundle(tmp_path / "b")


def test_missing_dsn_and_bad_bundles(tmp_path):
    _, saved = _save(tmp_path / "b")
    with pytest.raises(ModelBundleError, match="no down-sampling network"):
        saved.load_dsn()
    with pytest.raises(ModelBundleError, match="unknown model 'no-such-model'"):
        load_bundle("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelBundleError, match="not a model bundle"):
        load_bundle(tmp_path / "empty")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelBundleError, match="format version 99"):
        load_bundle(tmp_path / "b")


def test_weights_for_another_architecture_are_refused(tmp_path):
    _save(tmp_path / "b")
    manifest_path = tmp_path / "b" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["srn.pt"]["config"]["num_feat"] = 16
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ModelBundleError, match="cannot load weights"):
        load_bundle(tmp_path / "b").load_generator()


def test_half_precision_weights_halve_the_size_and_keep_the_output(tmp_path):
    torch.manual_seed(0)
    gen = SRGenerator(TINY_G).eval()
    common = dict(name="tiny-test", generator_state=gen.state_dict(), generator_config=TINY_G,
                  preprocessing=PRE, backbone={"source": "random", "seed": 0}, training={})
    full = save_bundle(tmp_path / "f32", **common)
    half = save_bundle(tmp_path / "f16", weights_dtype="float16", **common)
    assert half.manifest["files"]["srn.pt"]["dtype"] == "float16"
    ratio = half.manifest["files"]["srn.pt"]["bytes"] / full.manifest["files"]["srn.pt"]["bytes"]
    assert 0.45 < ratio < 0.75  # tensors halve; pickle overhead does not
    loaded = half.load_generator()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 1, 16, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), gen(x), rtol=2e-2, atol=2e-3)
    with pytest.raises(ValueError, match="weights_dtype"):
        save_bundle(tmp_path / "x", weights_dtype="int8", **common)


def test_ship_starter_updates_a_shipped_bundles_settings_and_card_without_touching_its_weights(tmp_path):
    """scripts/ship_starter.py with the shipped bundle as its own source: new recommended output settings
    (completed from the recorded ones) and card; the weights, their checksums and identity unchanged."""
    from _scripts import load_script

    ship = load_script("ship_starter")
    _, shipped = _save(tmp_path / "m", output={"background": "input", "slice_denoise": 2})
    weights = (tmp_path / "m" / "srn.pt").read_bytes()
    card = tmp_path / "card.md"
    card.write_text("# m\nnew card\n")
    ship.main([str(tmp_path / "m"), "--dest", str(tmp_path / "m"), "--projection", "kspace", "--card", str(card)])
    again = load_bundle(tmp_path / "m")  # the checksums hold
    assert again.sha256 == shipped.sha256 and (tmp_path / "m" / "srn.pt").read_bytes() == weights
    assert again.output == {"strength": 1.0, "background": "input", "slice_denoise": 2.0, "projection": "kspace"}
    assert again.manifest["training"]["output_changed"]["from"] == shipped.output
    assert (tmp_path / "m" / "MODEL_CARD.md").read_text() == card.read_text()
    with pytest.raises(ValueError, match="projection must be one of"):
        ship._update_in_place(again, {"projection": "sinc"}, None, None)
    assert load_bundle(tmp_path / "m").output == again.output  # a refused setting writes nothing
    with pytest.raises(SystemExit, match="updates only"):
        ship.main([str(tmp_path / "m"), "--dest", str(tmp_path / "m")])
