"""The shipped starter model, checked on committed real data it never saw in training.

``tests/data/hr/sub-trio`` is a brain crop of the held-out HR subject and ``tests/data/lr/sub-IXI603``
a held-out real 2 mm scan. The thresholds follow the model card. Inside the head mask the starter is on
a par with bicubic up-sampling (within 0.3 dB on this crop; +0.09 dB on the full volume): the paired
check catches gross breakage (orientation, intensity scaling, a mis-packed bundle cost several dB).
What the training bought is noise removal, and the no-reference check measures it: on IXI603 its
BRISQUE is 9.5 against 44.9 for bicubic and its NIQE 5.7 against 8.7 for the real LR, where the same
generator untrained scores 28.2 and 6.6 and fails.
"""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("torch")

from ddasr_nipype.bundle import list_bundled_models, load_bundle  # noqa: E402
from ddasr_nipype.evaluation import EvaluationConfig, run_evaluation  # noqa: E402

STARTER = "ixi-t1w-x2"
pytestmark = pytest.mark.skipif(STARTER not in list_bundled_models(), reason="starter model not bundled")


@pytest.fixture(scope="module")
def tables(hr_bids, lr_bids, tmp_path_factory):
    result = {}
    for name, data in (("table2_sr", {"hr_dir": hr_bids, "participants": ("trio",)}),
                       ("table1", {"lr_dir": lr_bids, "participants": ("IXI603",)})):
        out = tmp_path_factory.mktemp(name)
        run_evaluation(EvaluationConfig(out_dir=out, models=(STARTER,), degradations=("kspace-rician",),
                                        n_panels=0, **data))
        with open(out / f"{name}.csv") as handle:
            result[name] = {(r["method"], r["metric"]): float(r["mean"]) for r in csv.DictReader(handle)}
    return result


def test_starter_bundle_is_the_documented_one():
    bundle = load_bundle(STARTER)  # verifies every checksum
    assert bundle.generator_config.global_residual is True
    assert bundle.manifest["backbone"]["source"] == "random"  # the seeded random VGG19, as documented
    card = (bundle.path / "MODEL_CARD.md").read_text()
    assert bundle.sha256[:12] in card


def test_starter_keeps_par_with_bicubic_in_the_head_on_an_unseen_degradation(tables):
    table = tables["table2_sr"]
    assert table[(STARTER, "psnr_mask")] > table[("bicubic", "psnr_mask")] - 0.6
    assert table[(STARTER, "ssim_mask")] > table[("bicubic", "ssim_mask")] - 0.02
    assert table[(STARTER, "ssim")] > table[("bicubic", "ssim")] - 0.01


def test_starter_output_on_a_real_lr_scan_scores_as_documented(tables):
    table = tables["table1"]
    assert table[(STARTER, "brisque")] < table[("bicubic", "brisque")] - 30
    assert table[(STARTER, "niqe")] < table[("real LR", "niqe")] - 2.5
