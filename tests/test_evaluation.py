"""Evaluation engine, ddasr-eval and the QualityMetrics node, on small real data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import ttest_ind, ttest_rel

from ddasr_nipype.degradations import kspace_truncation
from ddasr_nipype.evaluation import EvaluationConfig, compare_methods, format_markdown, run_evaluation


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _dataset(root: Path, subject: str, img) -> Path:
    anat = root / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True)
    nib.save(img, anat / f"sub-{subject}_T1w.nii.gz")
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.8.0"}))
    return root


@pytest.fixture(scope="module")
def small_lr_bids(tmp_path_factory, lr_file) -> Path:
    """The real IXI LR scan cut to 8 central sagittal slices (keeps NIQE fast)."""
    img = nib.as_closest_canonical(nib.load(lr_file))
    cut = img.slicer[41:49]
    return _dataset(tmp_path_factory.mktemp("lr"), "IXI603", nib.Nifti1Image(np.asarray(cut.dataobj), cut.affine))


@pytest.fixture(scope="module")
def trio_bids(hr_bids) -> Path:
    return hr_bids


def test_compare_methods_tests_against_the_best_other():
    rng = np.random.default_rng(0)
    values = {"a": rng.normal(5, 1, 30), "b": rng.normal(3, 1, 30), "c": rng.normal(4, 1, 30)}
    rows = {r["method"]: r for r in compare_methods(values, "niqe")}  # lower is better: b is best
    assert rows["a"]["best_other"] == "b" and rows["c"]["best_other"] == "b"
    assert rows["b"]["best_other"] == "c"  # the best is tested against the runner-up
    assert rows["a"]["test"] == "paired t-test" and rows["a"]["n_test"] == 30
    assert rows["a"]["p_value"] == pytest.approx(ttest_rel(values["a"], values["b"]).pvalue)
    independent = {r["method"]: r for r in compare_methods(values, "niqe", test="independent")}
    assert independent["a"]["test"] == "independent t-test" and independent["a"]["n_test"] == 60
    assert independent["a"]["p_value"] == pytest.approx(ttest_ind(values["a"], values["b"]).pvalue)
    assert rows["a"]["mean"] == pytest.approx(values["a"].mean())
    assert rows["a"]["std"] == pytest.approx(values["a"].std(ddof=1))
    rows = {r["method"]: r for r in compare_methods(values, "psnr")}  # higher is better: a is best
    assert rows["b"]["best_other"] == "a"
    table = format_markdown(compare_methods(values, "ssim"))
    assert "| a | 5.0" not in table and "SSIM ↑" in table and table.count("\n") == 7
    assert table.endswith("p: two-sided paired t-test of each method against the best other method of its "
                          "column over the slices both methods scored.\n")
    with pytest.raises(ValueError, match="test must be one of"):
        compare_methods(values, "ssim", test="welch")


def test_the_paired_test_matches_slices_by_key_and_sees_a_consistent_difference():
    """Slices differ far more from each other than the two methods do on each slice: the paired test
    finds the consistent gain that the independent test misses (the case of ddasr-eval's tables)."""
    rng = np.random.default_rng(1)
    anatomy = rng.normal(0.80, 0.05, 40)  # per-slice SSIM level
    bicubic = anatomy
    model = anatomy + 0.004 + rng.normal(0, 0.002, 40)  # better on almost every slice
    keys = [("sub-a", i) for i in range(40)]
    paired = {r["method"]: r for r in compare_methods({"bicubic": bicubic, "model": model}, "ssim")}
    independent = {r["method"]: r for r in compare_methods({"bicubic": bicubic, "model": model}, "ssim",
                                                           test="independent")}
    assert paired["model"]["p_value"] < 1e-8 < 0.1 < independent["model"]["p_value"]
    # matched by (scan, slice), whatever the order; slices only one method scored are left out
    order = rng.permutation(40)
    rows = compare_methods({"bicubic": bicubic[order][:-3], "model": model}, "ssim",
                           keys={"bicubic": [keys[i] for i in order][:-3], "model": keys})
    kept = np.sort(order[:-3])
    row = {r["method"]: r for r in rows}["model"]
    assert row["n_test"] == 37 and row["n"] == 40
    assert row["p_value"] == pytest.approx(ttest_rel(model[kept], bicubic[kept]).pvalue)
    with pytest.raises(ValueError, match="needs the slices of each value"):
        compare_methods({"bicubic": bicubic[:-1], "model": model}, "ssim")


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="give an HR dataset, an LR dataset, or both"):
        EvaluationConfig(out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown degradation\(s\) \['nearest'\]"):
        EvaluationConfig(out_dir=tmp_path, hr_dir=tmp_path, degradations=("nearest",))
    with pytest.raises(ValueError, match="nothing to evaluate"):
        EvaluationConfig(out_dir=tmp_path, hr_dir=tmp_path, bicubic=False)
    with pytest.raises(ValueError, match="plane must be one of"):
        EvaluationConfig(out_dir=tmp_path, hr_dir=tmp_path, plane="all")
    with pytest.raises(ValueError, match="num_threads must be a positive integer"):
        EvaluationConfig(out_dir=tmp_path, hr_dir=tmp_path, num_threads=0)


def test_table1_real_lr_vs_bicubic(tmp_path, small_lr_bids):
    config = EvaluationConfig(out_dir=tmp_path / "out", lr_dir=small_lr_bids, n_panels=1,
                              no_reference_metrics=("niqe",))
    results = run_evaluation(config)
    rows = {r["method"]: r for r in _read_csv(tmp_path / "out" / "table1.csv")}
    assert set(rows) == {"real LR", "bicubic"}
    assert int(rows["real LR"]["n"]) == int(rows["bicubic"]["n"]) == 8  # the same slices
    # on this scan bicubic x2 has a clearly lower NIQE than the 2 mm original (see the README numbers)
    assert float(rows["bicubic"]["mean"]) < float(rows["real LR"]["mean"]) - 1
    assert float(rows["bicubic"]["p_value"]) < 0.05 and rows["bicubic"]["best_other"] == "real LR"
    assert rows["bicubic"]["test"] == "paired t-test" and int(rows["bicubic"]["n_test"]) == 8
    assert "p: two-sided paired t-test" in (tmp_path / "out" / "table1.md").read_text()
    slices = _read_csv(tmp_path / "out" / "slices.csv")
    per_volume = [r for r in slices if r["table"] == "table1_consistency"]  # slice -1: one per volume
    slices = [r for r in slices if r["table"] == "table1"]
    assert len(slices) == 16 and {r["metric"] for r in slices} == {"niqe"}
    assert len(per_volume) == 2 and {r["slice"] for r in per_volume} == {"-1"}
    assert "| real LR |" in (tmp_path / "out" / "table1.md").read_text()
    assert len(list((tmp_path / "out" / "panels").glob("*.png"))) == 1
    assert not (tmp_path / "out" / "degradation_params.json").exists()  # no Table II (SR) without HR scans
    assert [Path(p).name for p in results["panels"]] == [p.name for p in (tmp_path / "out" / "panels").glob("*.png")]
    # beside it, the consistency of each output with its scan, one value per volume (not the real LR's own)
    consistency = {(r["method"], r["metric"]): r for r in _read_csv(tmp_path / "out" / "table1_consistency.csv")}
    assert set(consistency) == {("bicubic", "rms_z"), ("bicubic", "pct_abs_z_gt3")}
    assert int(consistency[("bicubic", "rms_z")]["n"]) == 1
    assert 0.2 < float(consistency[("bicubic", "rms_z")]["mean"]) < 2.0
    assert 0 <= float(consistency[("bicubic", "pct_abs_z_gt3")]["mean"]) < 10
    assert "n volumes" in (tmp_path / "out" / "table1_consistency.md").read_text()


def test_table1_consistency_per_model(tmp_path, small_lr_bids):
    from _bundles import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle")  # random weights: an output unrelated to the scan
    config = EvaluationConfig(out_dir=tmp_path / "out", lr_dir=small_lr_bids, models=(str(bundle),), n_panels=0,
                              no_reference_metrics=("niqe",))
    rows = {(r["method"], r["metric"]): r for r in run_evaluation(config)["table1_consistency"]}
    assert rows[("tiny-test", "rms_z")]["mean"] > 5 * rows[("bicubic", "rms_z")]["mean"]
    assert rows[("tiny-test", "pct_abs_z_gt3")]["mean"] > rows[("bicubic", "pct_abs_z_gt3")]["mean"]


def test_table2_sr_with_bicubic_baseline_is_replayable(tmp_path, trio_bids):
    config = EvaluationConfig(out_dir=tmp_path / "a", hr_dir=trio_bids, participants=("sub-trio",),
                              degradations=("kspace", "realsr"), n_panels=1)
    run_evaluation(config)
    rows = _read_csv(tmp_path / "a" / "table2_sr.csv")
    by_key = {(r["degradation"], r["metric"]): float(r["mean"]) for r in rows}
    assert 20 < by_key[("kspace", "psnr")] < 40 and 0.5 < by_key[("kspace", "ssim")] < 1
    # blur + noise lose more than the k-space crop
    assert by_key[("realsr", "psnr")] < by_key[("kspace", "psnr")]
    params = json.loads((tmp_path / "a" / "degradation_params.json").read_text())
    assert set(params["sub-trio"]) == {"kspace", "realsr"} and "noise_sigma" in params["sub-trio"]["realsr"]
    assert len(list((tmp_path / "a" / "panels").glob("*.png"))) == 2
    provenance = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert provenance["hr_scans"] == ["sub-trio"] and provenance["lr_scans"] == []
    # a scan's random degradation depends on (seed, scan, degradation) only: run realsr alone
    run_evaluation(EvaluationConfig(out_dir=tmp_path / "b", hr_dir=trio_bids, participants=("trio",),
                                    degradations=("realsr",), n_panels=0))
    again = json.loads((tmp_path / "b" / "degradation_params.json").read_text())
    assert again["sub-trio"]["realsr"] == params["sub-trio"]["realsr"]
    assert [r for r in rows if r["degradation"] == "realsr"] == _read_csv(tmp_path / "b" / "table2_sr.csv")


def test_table2_ds_on_a_paired_dataset(tmp_path, hr_files):
    """Real LR made by k-space truncation of the HR scan: the k-space synthesis must match it best."""
    hr = nib.as_closest_canonical(nib.load(hr_files["trio"]))
    data = np.asarray(hr.dataobj, dtype=np.float64)
    lr = kspace_truncation(data, 2, axes=(1, 2))
    from ddasr_nipype.data.slicing import upsampled_affine

    lr_img = nib.Nifti1Image(lr.astype(np.float32), upsampled_affine(hr.affine, (1, 0.5, 0.5)))
    hr_dir = _dataset(tmp_path / "hr", "trio", hr)
    lr_dir = _dataset(tmp_path / "lr", "trio", lr_img)
    config = EvaluationConfig(out_dir=tmp_path / "out", hr_dir=hr_dir, lr_dir=lr_dir,
                              degradations=("bicubic", "kspace"), no_reference_metrics=(), n_panels=0)
    results = run_evaluation(config)
    rows = {(r["method"], r["metric"]): r for r in results["table2_ds"]}
    assert rows[("kspace", "psnr")]["mean"] > 40
    assert rows[("kspace", "psnr")]["mean"] > rows[("bicubic", "psnr")]["mean"] + 10
    assert rows[("bicubic", "psnr")]["best_other"] == "kspace"
    assert (tmp_path / "out" / "table2_ds.md").is_file() and not (tmp_path / "out" / "table1.csv").exists()


def test_model_path_with_a_tiny_bundle(tmp_path, trio_bids):
    from _bundles import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle")
    config = EvaluationConfig(out_dir=tmp_path / "out", hr_dir=trio_bids, participants=("trio",),
                              models=(str(bundle),), degradations=("bicubic",), n_panels=1)
    results = run_evaluation(config)
    methods = {r["method"] for r in results["table2_sr"]}
    assert methods == {"bicubic", "tiny-test"}
    tiny = {r["metric"]: r for r in results["table2_sr"] if r["method"] == "tiny-test"}
    assert math.isfinite(tiny["psnr"]["mean"]) and tiny["psnr"]["n"] > 0
    assert json.loads((tmp_path / "out" / "evaluation.json").read_text())["models"][0]["name"] == "tiny-test"


def test_bundles_that_share_a_name_get_a_row_each(tmp_path, trio_bids):
    """A fine-tune keeps its parent's name by default: comparing the two must not merge their rows."""
    from _bundles import make_tiny_bundle
    from ddasr_nipype.bundle import load_bundle

    first, second = make_tiny_bundle(tmp_path / "a", seed=0), make_tiny_bundle(tmp_path / "b", seed=1)
    config = EvaluationConfig(out_dir=tmp_path / "out", hr_dir=trio_bids, participants=("trio",),
                              models=(str(first), str(second)), degradations=("bicubic",), n_panels=0)
    results = run_evaluation(config)
    labels = [f"tiny-test ({load_bundle(b).sha256[:8]})" for b in (first, second)]
    assert labels[0] != labels[1]
    psnr = {r["method"]: r["mean"] for r in results["table2_sr"] if r["metric"] == "psnr"}
    assert set(psnr) == {"bicubic", *labels}
    assert psnr[labels[0]] != psnr[labels[1]]  # two different generators, two different scores
    models = json.loads((tmp_path / "out" / "evaluation.json").read_text())["models"]
    assert [m["label"] for m in models] == labels and {m["name"] for m in models} == {"tiny-test"}
    with pytest.raises(ValueError, match="given twice"):
        run_evaluation(EvaluationConfig(out_dir=tmp_path / "again", hr_dir=trio_bids, participants=("trio",),
                                        models=(str(first), str(first)), degradations=("bicubic",)))


def test_network_only_rows_score_a_bundle_without_its_recommended_output(tmp_path, trio_bids):
    import shutil

    from _bundles import make_tiny_bundle

    plain = make_tiny_bundle(tmp_path / "plain")
    blend = tmp_path / "blend"
    shutil.copytree(plain, blend)
    manifest = json.loads((blend / "manifest.json").read_text())
    manifest["output"] = {"strength": 0.0, "background": "model"}  # its recommendation: plain bicubic
    (blend / "manifest.json").write_text(json.dumps(manifest))

    def psnr_rows(bundle, out):
        config = EvaluationConfig(out_dir=tmp_path / out, hr_dir=trio_bids, participants=("trio",),
                                  models=(str(bundle),), degradations=("bicubic",), n_panels=0,
                                  network_only=True)
        return {r["method"]: r["mean"] for r in run_evaluation(config)["table2_sr"] if r["metric"] == "psnr"}

    blended = psnr_rows(blend, "blend")
    assert sorted(blended) == ["bicubic", "tiny-test", "tiny-test (network only)"]
    assert blended["tiny-test"] == pytest.approx(blended["bicubic"], abs=1e-6)  # strength 0 is bicubic
    assert abs(blended["tiny-test (network only)"] - blended["bicubic"]) > 1.0
    plain_rows = psnr_rows(plain, "plain")  # recommends the network alone: no second row
    assert sorted(plain_rows) == ["bicubic", "tiny-test"]
    assert plain_rows["tiny-test"] == pytest.approx(blended["tiny-test (network only)"], abs=1e-9)


def test_brain_mask_adds_psnr_inside_the_brain(tmp_path, trio_bids):
    pytest.importorskip("deepbet")
    config = EvaluationConfig(out_dir=tmp_path / "out", hr_dir=trio_bids, participants=("trio",),
                              degradations=("bicubic",), n_panels=0, brain_mask="deepbet")
    rows = {r["metric"]: r for r in run_evaluation(config)["table2_sr"] if r["method"] == "bicubic"}
    assert rows["psnr_brain"]["n"] > 0 and math.isfinite(rows["psnr_brain"]["mean"])
    assert 0 < rows["ssim_brain"]["mean"] < 1
    # the brain is a part of the head mask, with other errors than the scalp and skull around it
    assert abs(rows["psnr_brain"]["mean"] - rows["psnr_mask"]["mean"]) > 0.1
    rows_3d = {r["metric"] for r in csv.DictReader((tmp_path / "out" / "table2_sr_3d.csv").read_text().splitlines())}
    assert "| n volumes |" in (tmp_path / "out" / "table2_sr_3d.md").read_text()  # one value per volume
    assert "| n slices |" in (tmp_path / "out" / "table2_sr.md").read_text()
    assert {"psnr_3d_brain", "ssim_3d_brain"} <= rows_3d
    with pytest.raises(ValueError, match="brain_mask"):
        EvaluationConfig(out_dir=tmp_path, hr_dir=trio_bids, brain_mask="bet")


def test_cli(tmp_path, trio_bids):
    import torch

    from ddasr_nipype.bids_app.evaluate import main

    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "--degradation" in result.output
    result = runner.invoke(main, ["--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "give --hr, --lr or both" in result.output
    result = runner.invoke(main, ["--hr", str(trio_bids), "--out", str(tmp_path / "y"),
                                  "--participant-label", "nobody"])
    assert result.exit_code == 1 and "not found" in result.output
    assert "--num-threads" in runner.invoke(main, ["--help"]).output
    threads = torch.get_num_threads()
    try:
        result = runner.invoke(main, ["--hr", str(trio_bids), "--out", str(tmp_path / "out"), "--participant-label",
                                      "trio", "--degradation", "bicubic", "--panels", "0", "--num-threads", "1",
                                      "--test", "independent"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert "| bicubic | bicubic |" in result.output
    assert (tmp_path / "out" / "table2_sr.csv").is_file()
    config = json.loads((tmp_path / "out" / "evaluation.json").read_text())["config"]
    assert config["num_threads"] == 1 and config["test"] == "independent"
    assert {r["test"] for r in _read_csv(tmp_path / "out" / "table2_sr.csv")} == {"independent t-test"}
    assert "p: two-sided independent t-test" in result.output
    assert "--test [paired|independent]" in runner.invoke(main, ["--help"]).output
    assert not (tmp_path / "out" / "panels").exists()
    assert f"Tables and per-slice values written to {tmp_path / 'out'}\n" in result.output
    assert "panel" not in result.output.lower()  # --panels 0: none written, none announced
    assert "Table II (SR): sub-trio (1/1), bicubic" in result.output  # progress on stderr


def test_quality_metrics_node(tmp_path, hr_files):
    from ddasr_nipype.interfaces.metrics import QualityMetrics

    node = QualityMetrics(in_file=str(hr_files["trio"]), reference_file=str(hr_files["trio"]),
                          metrics=["niqe"])
    result = node.run(cwd=str(tmp_path))
    metrics = result.outputs.metrics
    assert metrics["psnr_3d"] == float("inf") and metrics["ssim_mean"] == pytest.approx(1.0)
    assert metrics["n_slices"] > 10 and 0 < metrics["niqe_mean"] < 30
    saved = json.loads(Path(result.outputs.out_metrics).read_text())
    assert Path(result.outputs.out_metrics).name == "sub-trio_T1w_metrics.json"
    assert saved["psnr_3d"] == "inf" and saved["niqe_mean"] == pytest.approx(metrics["niqe_mean"])
    for name, trait in QualityMetrics.input_spec().traits().items():
        if not name.startswith("trait_") and name not in ("trait_added", "trait_modified"):
            assert trait.desc, f"input {name} has no desc"


def _bicubic_like_bundle(path: Path):
    """A generator whose learned part is zero: its output is its global bicubic residual."""
    from ddasr_nipype.bundle import save_bundle
    from ddasr_nipype.models import GeneratorConfig, SRGenerator

    config = GeneratorConfig(num_feat=4, num_grow_ch=4, num_down=1, num_bottleneck_blocks=1, global_residual=True)
    state = SRGenerator(config).state_dict()
    state["conv_last.weight"].zero_()
    state["conv_last.bias"].zero_()
    return save_bundle(path, name="bicubic-like", generator_state=state, generator_config=config,
                       preprocessing={"plane": "sagittal", "scale": 2},
                       backbone={"source": "random", "seed": 0}, training={"note": "test fixture"})


def _cut_one_voxel(path: Path, out: Path) -> Path:
    """The scan (RAS) less its last voxel on each axis, as the one T1w of a BIDS dataset ``out``."""
    img = nib.as_closest_canonical(nib.load(path))
    cut = img.slicer[:-1, :-1, :-1]
    return _dataset(out, "cut", nib.Nifti1Image(np.asarray(cut.dataobj), cut.affine)) / "sub-cut" / "anat" / "sub-cut_T1w.nii.gz"


def test_quick_paired_check_scores_a_bicubic_generator_as_bicubic(tmp_path, hr_files):
    """scripts/quick_paired_check.py (the recipe-selection check): a generator whose learned part is
    zero is its global bicubic residual, so it must score as bicubic up to the two cubic kernels
    (torch's a = -0.75 vs MATLAB's -0.5); a one-pixel grid shift would cost several dB."""
    import torch
    from _scripts import load_script

    bundle = _bicubic_like_bundle(tmp_path / "bicubic-like")
    script = load_script("quick_paired_check")
    threads = torch.get_num_threads()
    try:
        rows = script.check(hr_files["trio"], [str(bundle.path)], cache_dir=None,
                            degradations=("bicubic", "kspace"), mask_method="none", slice_step=4,
                            runners={"strength 0": script.bundle_runner(str(bundle.path), 0.0)})
    finally:
        torch.set_num_threads(threads)
    assert [r["method"] for r in rows] == ["bicubic", str(bundle.path), "strength 0"] * 2
    # network weight 0 is bicubic up-sampling of the same LR slice, exactly
    assert all(r["d_head"] == pytest.approx(0.0, abs=1e-6) for r in rows if r["method"] == "strength 0")
    rows = [r for r in rows if r["method"] != "strength 0"]
    for base, model in (rows[0:2], rows[2:4]):
        assert base["n"] == model["n"] > 0 and base["d_head"] == 0.0
        assert 15 < base["psnr_head"] < 40 and math.isnan(base["psnr_brain"]) and math.isnan(model["d_brain"])
        assert abs(model["d_head"]) < 0.3
        assert model["psnr_head"] - base["psnr_head"] == pytest.approx(model["d_head"], abs=1e-9)


def test_an_odd_sized_scan_scores_like_its_even_crop(tmp_path, hr_files):
    """The x2 LR of an odd-sized axis has ceil(n / 2) voxels over the same field of view, so x2 outputs
    are not on the HR grid; cut to it they drift up to half a voxel (-1.8 dB for bicubic on the test
    scan cut by one voxel). ddasr-eval and the quick check crop odd in-plane sizes to even first
    ("modcrop"), so a scan one voxel larger scores about as its even crop."""
    import torch
    from _scripts import load_script

    bundle = _bicubic_like_bundle(tmp_path / "bicubic-like")
    odd = _cut_one_voxel(hr_files["trio"], tmp_path / "bids")
    even = _cut_one_voxel(odd, tmp_path / "even")  # cut once more: even sizes, nothing for the crop to do
    assert all(n % 2 for n in nib.load(odd).shape) and not any(n % 2 for n in nib.load(even).shape)

    def evaluate(bids, out):
        config = EvaluationConfig(out_dir=tmp_path / out, hr_dir=bids, degradations=("bicubic",),
                                  models=(str(bundle.path),), n_panels=1)
        return {r["method"]: r["mean"] for r in run_evaluation(config)["table2_sr"] if r["metric"] == "psnr_mask"}

    scores = {"odd": evaluate(tmp_path / "bids", "out-odd"), "even": evaluate(tmp_path / "even", "out-even")}
    for psnr in scores.values():
        assert 15 < psnr["bicubic"] < 40 and psnr["bicubic-like"] == pytest.approx(psnr["bicubic"], abs=0.3)
    assert scores["odd"]["bicubic"] == pytest.approx(scores["even"]["bicubic"], abs=0.5)
    script = load_script("quick_paired_check")
    threads = torch.get_num_threads()
    try:
        quick = {name: script.check(path, [str(bundle.path)], cache_dir=None, degradations=("bicubic",),
                                    mask_method="none") for name, path in (("odd", odd), ("even", even))}
    finally:
        torch.set_num_threads(threads)
    assert quick["odd"][0]["psnr_head"] == pytest.approx(quick["even"][0]["psnr_head"], abs=0.5)
    assert abs(quick["odd"][1]["d_head"]) < 0.3


def test_progress_bar_in_a_terminal_counts_every_scan_and_degradation(tmp_path, trio_bids, monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    run_evaluation(EvaluationConfig(out_dir=tmp_path / "out", hr_dir=trio_bids, participants=("trio",),
                                    degradations=("bicubic", "kspace"), n_panels=0))
    text = terminal.getvalue()
    assert "\r" in text and "2/2" in text and "Table II (SR) sub-trio kspace" in text
