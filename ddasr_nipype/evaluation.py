"""Evaluation engine: tables like the paper's Tables I and II, with t-tests, CSV/markdown and panels.

- **Table I** (no reference, real LR scans of ``lr_dir``): NIQE and BRISQUE of the real LR scan,
  of bicubic up-sampling and of each model's SR output, per 2D slice of ``plane``. Beside it, **Table I
  (consistency)**: how faithful each output is to its scan where NIQE/BRISQUE say how natural it looks,
  one value per volume (:mod:`ddasr_nipype.consistency`: the output averaged back over each input voxel,
  minus the input, over the input's noise level): RMS z and the percentage of voxels with
  ``|z| > 3``, inside the head mask, or inside the LR scan's deepbet brain mask with
  ``brain_mask="deepbet"``.
- **Table II, SR** (``hr_dir``): each HR scan is degraded with each named degradation
  (:mod:`ddasr_nipype.degradations`, in the two in-plane axes of ``plane``, seeded per scan and
  degradation, parameters saved), up-sampled again by bicubic interpolation and by each model,
  and compared with the HR ground truth (PSNR/SSIM, whole slice and inside the brain mask).
- **Table II, DS** (scans present in both datasets, on matching grids): each synthetic LR
  (every degradation, and the DSN of every bundle that has one) against the real LR scan.

Statistics: mean ± std over all evaluated slices of all scans (the paper's protocol), and a
two-sided t-test of every method against the best *other* method of its table (by mean; lower is
better for NIQE/BRISQUE, higher for PSNR/SSIM). Every method scores the same slices of the same
scans, so by default the test is **paired** (``scipy.stats.ttest_rel``) over the slices both methods
scored (matched by scan and slice index; one value per volume in the 3D table). ``test="independent"``
gives the independent test (``scipy.stats.ttest_ind``, equal variances), which ignores the pairing and
so understates the significance of a consistent per-slice difference. Each table names its test
(``test`` and ``n_test`` columns of the CSV, a note under the markdown table). Intensity
normalization and slice selection: :mod:`ddasr_nipype.metrics.volume`.

Outputs in ``out_dir``: ``table1.{csv,md}``, ``table1_consistency.{csv,md}``, ``table2_sr.{csv,md}``,
``table2_ds.{csv,md}`` (when they have rows), ``slices.csv`` (every per-slice value), ``degradation_params.json`` (when Table II
(SR) runs), ``evaluation.json`` (configuration and provenance) and ``panels/*.png`` (unless
``n_panels`` is 0).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .degradations import DEGRADATIONS, bicubic_upsample, bicubic_upsample_volume, get_degradation
from .metrics.volume import (
    PLANES,
    foreground_mask,
    no_reference_scores,
    normalize_volume,
    reference_scores,
    select_slices,
    summarize,
    take_slice,
)
from .progress import progress_bar

__all__ = ["EvaluationConfig", "run_evaluation", "find_scans", "compare_methods", "format_markdown",
           "quality_metrics_file", "crop_to_scale"]



LOGGER = logging.getLogger(__name__)


def lower_is_better(metric: str) -> bool:
    """NIQE and BRISQUE: lower is better; PSNR and SSIM (any variant): higher is better."""
    if metric.startswith(("niqe", "brisque")):
        return True
    if metric.startswith(("psnr", "ssim")):
        return False
    if metric in CONSISTENCY_METRICS:  # disagreement with the scan: the less the better
        return True
    raise ValueError(f"unknown metric {metric!r}")

#: ``--test``: the statistical test of each method against the best other one
TESTS = {"paired": "paired t-test", "independent": "independent t-test"}

REAL_LR = "real LR"
BICUBIC = "bicubic"
#: Table I (consistency), per volume: RMS z and the percentage of voxels with |z| > 3 in the mask
CONSISTENCY_METRICS = ("rms_z", "pct_abs_z_gt3")
#: ``none``: PSNR/SSIM in the head (Otsu foreground) mask only; ``deepbet``: also inside the HR's brain
BRAIN_MASKS = ("none", "deepbet")


@dataclass(frozen=True)
class EvaluationConfig:
    """Everything one evaluation run needs (saved to ``evaluation.json``)."""

    out_dir: Path
    hr_dir: Path | None = None
    lr_dir: Path | None = None
    models: tuple[str, ...] = ()
    bicubic: bool = True
    degradations: tuple[str, ...] = tuple(sorted(DEGRADATIONS))
    plane: str = "sagittal"
    scale: int = 2
    participants: tuple[str, ...] = ()
    no_reference_metrics: tuple[str, ...] = ("niqe", "brisque")
    min_brain_fraction: float = 0.1
    niqe_block_size: int = 96
    seed: int = 0
    n_panels: int = 3
    device: str = "cpu"
    brain_mask: str = "none"
    #: also score each model's network alone (strength 1, its output in the air too), beside the
    #: output settings its bundle recommends (:func:`ddasr_nipype.inference.output_settings`)
    network_only: bool = False
    #: CPU threads of torch (``torch.set_num_threads``); ``None``: torch's default
    num_threads: int | None = None
    #: ``paired`` (default: over the slices both methods scored) or ``independent`` t-test
    test: str = "paired"

    def __post_init__(self):
        if self.hr_dir is None and self.lr_dir is None:
            raise ValueError("give an HR dataset, an LR dataset, or both")
        if self.plane not in PLANES:
            raise ValueError(f"plane must be one of {sorted(PLANES)}, got {self.plane!r}")
        unknown = sorted(set(self.degradations) - set(DEGRADATIONS))
        if unknown:
            raise ValueError(f"unknown degradation(s) {unknown}; choose from {sorted(DEGRADATIONS)}")
        if not self.bicubic and not self.models:
            raise ValueError("nothing to evaluate: give a model bundle or keep the bicubic baseline")
        if self.brain_mask not in BRAIN_MASKS:
            raise ValueError(f"brain_mask must be one of {BRAIN_MASKS}, got {self.brain_mask!r}")
        if isinstance(self.scale, bool) or int(self.scale) != self.scale or self.scale < 2:
            raise ValueError(f"scale must be an integer >= 2, got {self.scale!r}")
        if self.num_threads is not None and (isinstance(self.num_threads, bool) or int(self.num_threads) < 1):
            raise ValueError(f"num_threads must be a positive integer, got {self.num_threads!r}")
        if self.test not in TESTS:
            raise ValueError(f"test must be one of {sorted(TESTS)}, got {self.test!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Scan:
    """One T1w scan of a BIDS dataset; ``key`` (entities without the suffix) pairs HR with LR."""

    key: str
    subject: str
    path: Path


def find_scans(bids_dir: Path, participants: Sequence[str] = ()) -> list[Scan]:
    """T1w scans of a BIDS dataset (pybids), optionally restricted to some participant labels."""
    from bids import BIDSLayout

    layout = BIDSLayout(str(bids_dir), validate=False)
    labels = [p[4:] if p.startswith("sub-") else p for p in participants]
    missing = sorted(set(labels) - set(layout.get_subjects()))
    if missing:
        raise ValueError(f"participant(s) {missing} not found in {bids_dir}")
    query = {"subject": labels} if labels else {}  # subject=None would mean "no subject entity"
    files = layout.get(suffix="T1w", extension=[".nii", ".nii.gz"], return_type="object", **query)
    scans = []
    for f in sorted(files, key=lambda f: f.path):
        name = Path(f.path).name
        key = name.split(".nii")[0].rsplit("_T1w", 1)[0]
        scans.append(Scan(key=key, subject=f.entities["subject"], path=Path(f.path)))
    if not scans:
        raise ValueError(f"no T1w scan found in {bids_dir}" + (f" for {labels}" if labels else ""))
    return scans


def _load_ras(path: Path):
    from .data.io import load_volume, to_ras

    img = load_volume(path)
    img_ras, _ = to_ras(img)
    return img, img_ras, np.asarray(img_ras.dataobj, dtype=np.float64)


def crop_to_scale(img, axes: Sequence[int], scale: int):
    """Crop the far end of ``axes`` of a nibabel image to multiples of ``scale`` (the "modcrop" of SR
    benchmarks; the affine is unchanged).

    The x``scale`` LR of an ``n``-voxel axis has ``ceil(n / scale)`` voxels spanning the same field of
    view, so where ``n`` is not a multiple of ``scale`` the network's ``scale * ceil(n / scale)``
    output voxels are not on the HR grid: cut to the first ``n`` they drift up to half a voxel from it.
    """
    keep = tuple(slice(0, n - n % scale) if a in axes else slice(None) for a, n in enumerate(img.shape))
    return img.slicer[keep]


def _inplane_axes(plane: str) -> tuple[int, int]:
    axis = PLANES[plane]
    return tuple(a for a in range(3) if a != axis)  # type: ignore[return-value]


def _plane_factors(plane: str, scale: int) -> tuple[int, int, int]:
    return tuple(1 if a == PLANES[plane] else scale for a in range(3))  # type: ignore[return-value]


def _upsample_mask(mask: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    return bicubic_upsample_volume(mask.astype(np.float64), factors) > 0.5


class _Models:
    """Model bundles, loaded once, each with the label its rows carry in the tables.

    The label is the bundle's name; bundles that share a name (a fine-tune of a model keeps it by
    default) or take a baseline's name get their sha256 prefix added, so no row hides another.
    Each bundle runs with the output settings it recommends; with ``network_only`` a bundle that
    recommends other settings than the network alone gets a second row, ``<label> (network only)``,
    whose settings are in :attr:`overrides`.
    """

    def __init__(self, names: Sequence[str], *, scale: int, plane: str, device: str,
                 network_only: bool = False):
        self.plane = plane
        self.device = device
        #: ``(label, bundle)`` pairs in the order given
        self.labelled: list[tuple[str, Any]] = []
        #: output settings of the rows that do not run with their bundle's recommendation
        self.overrides: dict[str, dict[str, Any]] = {}
        if names:
            from collections import Counter

            from .bundle import load_bundle

            bundles = [load_bundle(name) for name in names]
            for bundle in bundles:
                if bundle.scale != scale:
                    raise ValueError(f"model {bundle.name!r} has scale {bundle.scale}, the evaluation {scale}")
            counts = Counter(b.name for b in bundles)
            for bundle in bundles:
                clash = counts[bundle.name] > 1 or bundle.name in (BICUBIC, REAL_LR)
                self.labelled.append((f"{bundle.name} ({bundle.sha256[:8]})" if clash else bundle.name, bundle))
            labels = [label for label, _ in self.labelled]
            if len(set(labels)) != len(labels):
                raise ValueError(f"the same model bundle is given twice: {', '.join(labels)}")
            if network_only:
                from .inference import DEFAULT_OUTPUT, output_settings

                for label, bundle in list(self.labelled):
                    if output_settings(bundle) != DEFAULT_OUTPUT:
                        self.labelled.append((f"{label} (network only)", bundle))
                        self.overrides[f"{label} (network only)"] = DEFAULT_OUTPUT

    def super_resolve(self, bundle, img, label: str = "") -> np.ndarray:
        from .data.io import to_ras
        from .inference import super_resolve_image

        out_img, _ = super_resolve_image(img, bundle, planes=self.plane, device=self.device,
                                         **self.overrides.get(label, {}))
        return np.asarray(to_ras(out_img)[0].dataobj, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Statistics and tables


def _paired(a: np.ndarray, b: np.ndarray, keys_a: Sequence | None, keys_b: Sequence | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The values of the slices both methods scored, in matching order (finite values only)."""
    if keys_a is None or keys_b is None:
        if a.size != b.size:
            raise ValueError(f"a paired test needs the slices of each value: got {a.size} and {b.size} values "
                             "without keys")
        finite = np.isfinite(a) & np.isfinite(b)
        return a[finite], b[finite]
    if len(keys_a) != a.size or len(keys_b) != b.size:
        raise ValueError("every value needs one key")
    index_b = {key: i for i, key in enumerate(keys_b)}
    if len(index_b) != len(keys_b) or len(set(keys_a)) != len(keys_a):
        raise ValueError("a slice key appears twice for one method")
    pairs = [(i, index_b[key]) for i, key in enumerate(keys_a)
             if key in index_b and np.isfinite(a[i]) and np.isfinite(b[index_b[key]])]
    ia = np.array([p[0] for p in pairs], dtype=int)
    ib = np.array([p[1] for p in pairs], dtype=int)
    return a[ia], b[ib]


def compare_methods(values: dict[str, np.ndarray], metric: str, *, test: str = "paired",
                    keys: dict[str, Sequence] | None = None) -> list[dict[str, Any]]:
    """Mean ± std per method and a two-sided t-test of each method against the best other method.

    ``test="paired"`` (``scipy.stats.ttest_rel``) compares the two methods on the slices both scored:
    ``keys[method]`` names each value's slice (e.g. ``(scan, slice index)``); without ``keys`` the
    i-th values of the two methods are the same slice. ``test="independent"``
    (``scipy.stats.ttest_ind``, equal variances) ignores the pairing. Each row gives ``test`` (its
    name), ``n_test`` (the values, or pairs, the test used) and ``p_value`` (NaN when there is nothing
    to test: fewer than two values or pairs, or no variation at all).
    """
    from scipy.stats import ttest_ind, ttest_rel

    if test not in TESTS:
        raise ValueError(f"test must be one of {sorted(TESTS)}, got {test!r}")
    lower = lower_is_better(metric)
    stats = {m: summarize(v) for m, v in values.items()}
    rows = []
    for method, (mean, std, n) in stats.items():
        others = [(m, s[0]) for m, s in stats.items() if m != method and s[2] > 0]
        row = {"method": method, "metric": metric, "mean": mean, "std": std, "n": n,
               "best_other": "", "test": TESTS[test], "n_test": 0, "p_value": float("nan")}
        if others and n > 1:
            best = min(others, key=lambda t: t[1]) if lower else max(others, key=lambda t: t[1])
            a = np.asarray(values[method], dtype=float)
            b = np.asarray(values[best[0]], dtype=float)
            row["best_other"] = best[0]
            if test == "paired":
                a, b = _paired(a, b, (keys or {}).get(method), (keys or {}).get(best[0]))
                row["n_test"] = int(a.size)
                if a.size > 1 and np.ptp(a - b) > 0:
                    row["p_value"] = float(ttest_rel(a, b).pvalue)
            else:
                a, b = a[np.isfinite(a)], b[np.isfinite(b)]
                row["n_test"] = int(a.size + b.size)
                if a.size > 1 and b.size > 1 and (np.ptp(a) > 0 or np.ptp(b) > 0):
                    row["p_value"] = float(ttest_ind(a, b).pvalue)
        rows.append(row)
    return rows


def _fmt(mean: float, std: float, metric: str) -> str:
    if math.isnan(mean):
        return "n/a"
    digits = 3 if metric.startswith("ssim") else 2
    if math.isinf(mean):
        return "inf"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if not math.isnan(std) else f"{mean:.{digits}f}"


def format_markdown(rows: list[dict[str, Any]], *, group: str = "", title: str = "", unit: str = "slices") -> str:
    """A markdown table: one line per (group,) method, one ``mean ± std (p)`` column per metric, and
    the number of ``unit`` (slices, or volumes for the 3D table) the means are over."""
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    keys = list(dict.fromkeys((r.get(group, "") if group else "", r["method"]) for r in rows))
    cell = {(r.get(group, "") if group else "", r["method"], r["metric"]): r for r in rows}
    head = ([group.capitalize()] if group else []) + ["Method"] + [
        f"{m.upper()} {'↓' if lower_is_better(m) else '↑'}" for m in metrics] + [f"n {unit}"]
    lines = [f"### {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, method in keys:
        cells = [g] if group else []
        cells.append(method)
        n = ""
        for m in metrics:
            r = cell.get((g, method, m))
            if r is None:
                cells.append("")
                continue
            text = _fmt(r["mean"], r["std"], m)
            if not math.isnan(r["p_value"]):
                text += f" (p={r['p_value']:.2g} vs {r['best_other']})"
            cells.append(text)
            n = n or str(r["n"])
        cells.append(n)
        lines.append("| " + " | ".join(cells) + " |")
    tests = list(dict.fromkeys(r["test"] for r in rows if r.get("test")))
    if tests:
        paired = "over the " + unit + " both methods scored" if tests == [TESTS["paired"]] else ""
        lines += ["", f"p: two-sided {' / '.join(tests)} of each method against the best other method "
                  f"of its column{(' ' + paired) if paired else ''}."]
    return "\n".join(lines) + "\n"


def _write_table(out_dir: Path, name: str, rows: list[dict[str, Any]], *, group: str = "", title: str,
                 unit: str = "slices") -> None:
    if not rows:
        return
    fields = ([group] if group else []) + ["method", "metric", "mean", "std", "n", "best_other", "test",
                                           "n_test", "p_value"]
    with open(out_dir / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / f"{name}.md").write_text(format_markdown(rows, group=group, title=title, unit=unit))


# --------------------------------------------------------------------------------------------
# Panels


def _save_panel(path: Path, images: list[tuple[str, np.ndarray]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(3 * len(images), 3.3), squeeze=False)
    for ax, (label, img) in zip(axes[0], images):
        # first in-plane axis horizontal, second vertical, origin at the bottom (RAS: upright)
        ax.imshow(np.asarray(img).T, cmap="gray", origin="lower", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.82, wspace=0.03)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _nearest_view(lr_slice: np.ndarray, scale: int) -> np.ndarray:
    """An LR slice shown on the SR grid (each LR pixel repeated), so panels line up."""
    return np.repeat(np.repeat(np.clip(lr_slice, 0, 1), scale, axis=0), scale, axis=1)


def _panel_slices(indices: np.ndarray, n: int) -> list[int]:
    if n <= 0 or indices.size == 0:
        return []
    picks = np.linspace(0, indices.size - 1, n + 2)[1:-1] if indices.size > n else np.arange(indices.size)
    return sorted({int(indices[int(round(p))]) for p in picks})


# --------------------------------------------------------------------------------------------
# The three evaluations


@dataclass
class _Collector:
    """Per-slice values: ``values[table][(group, method, metric)] -> list``, and the long CSV."""

    values: dict[str, dict[tuple[str, str, str], list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    #: the (scan, slice index) of every value, for the paired test
    keys: dict[str, dict[tuple[str, str, str], list[tuple[str, int]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    long_rows: list[dict[str, Any]] = field(default_factory=list)
    #: the PNG panels written
    panels: list[Path] = field(default_factory=list)

    def add(self, table: str, scan: str, group: str, method: str, slices: np.ndarray,
            scores: dict[str, Any], metrics: Sequence[str]) -> None:
        for metric in metrics:
            vals = np.asarray(scores[metric], dtype=float)
            self.values[table][(group, method, metric)].extend(vals.tolist())
            self.keys[table][(group, method, metric)].extend((scan, int(i)) for i in slices)
            for index, value in zip(slices, vals):
                self.long_rows.append({"table": table, "scan": scan, "group": group, "method": method,
                                       "slice": int(index), "metric": metric, "value": float(value)})

    def rows(self, table: str, group_name: str = "", test: str = "paired") -> list[dict[str, Any]]:
        by_group: dict[tuple[str, str], dict[str, np.ndarray]] = defaultdict(dict)
        keys: dict[tuple[str, str], dict[str, list]] = defaultdict(dict)
        for (group, method, metric), vals in self.values[table].items():
            by_group[(group, metric)][method] = np.asarray(vals)
            keys[(group, metric)][method] = self.keys[table][(group, method, metric)]
        rows = []
        for (group, metric), values in by_group.items():
            for row in compare_methods(values, metric, test=test, keys=keys[(group, metric)]):
                if group_name:
                    row[group_name] = group
                rows.append(row)
        order = {m: i for i, m in enumerate(dict.fromkeys(k[1] for k in self.values[table]))}
        return sorted(rows, key=lambda r: (r.get(group_name, ""), order[r["method"]]))


def _step(bar, label: str | None = None) -> None:
    """The progress bar of :func:`run_evaluation` (a terminal only): name the step that starts, or
    (no ``label``) count the one that ended."""
    if bar is None:
        return
    if label is None:
        bar.update()
    else:
        bar.set_description_str(label)


def _table1(config: EvaluationConfig, scans: list[Scan], models: _Models, out: _Collector, bar=None) -> None:
    factors = _plane_factors(config.plane, config.scale)
    metrics = config.no_reference_metrics
    for number, scan in enumerate(scans, 1):
        LOGGER.info("Table I: %s (%d/%d)", scan.key, number, len(scans))
        _step(bar, f"Table I {scan.key}")
        img, _, lr = _load_ras(scan.path)
        mask = foreground_mask(lr)
        up_mask = _upsample_mask(mask, factors)
        volumes = {REAL_LR: (lr, mask)}
        if config.bicubic:
            volumes[BICUBIC] = (bicubic_upsample_volume(lr, factors), up_mask)
        for label, bundle in models.labelled:
            volumes[label] = (models.super_resolve(bundle, img, label), up_mask)
        normalized = {}
        for method, (vol, vmask) in volumes.items():
            if vol.shape != vmask.shape:
                raise RuntimeError(f"{method} output {vol.shape} is not on the expected grid {vmask.shape}")
            normalized[method] = normalize_volume(vol, vmask)
            scores = no_reference_scores(normalized[method], plane=config.plane, mask=vmask, metrics=metrics,
                                         min_fraction=config.min_brain_fraction,
                                         niqe_block_size=config.niqe_block_size)
            out.add("table1", scan.key, "", method, scores["slice"], scores, metrics)
        _consistency_rows(config, scan, img, lr, mask, volumes, out)
        for index in _panel_slices(select_slices(mask, config.plane, config.min_brain_fraction), config.n_panels):
            images = [(m, take_slice(v, config.plane, index)) for m, v in normalized.items()]
            images[0] = (REAL_LR, _nearest_view(images[0][1], config.scale))
            path = config.out_dir / "panels" / f"{scan.key}_table1_{config.plane}-{index}.png"
            _save_panel(path, images, f"{scan.key}: real LR, {config.plane} slice {index}")
            out.panels.append(path)
        _step(bar)


def _consistency_rows(config: EvaluationConfig, scan: Scan, img, lr: np.ndarray, head: np.ndarray,
                      volumes: dict[str, tuple[np.ndarray, np.ndarray]], out: _Collector) -> None:
    """Table I (consistency): each output's physics z-map against the real LR scan, one value per volume."""
    from .consistency import estimate_noise, redegrade, summarize_zmap, zmap
    from .data.io import to_ras

    factors = _plane_factors(config.plane, config.scale)
    img_ras = to_ras(img)[0]
    mask, mask_name = head, "head"
    if config.brain_mask == "deepbet":
        mask, mask_name = _brain_mask(img_ras), "brain"
    noise = estimate_noise(lr, head)
    for method, (vol, _) in volumes.items():
        if method == REAL_LR:
            continue
        summary = summarize_zmap(zmap(lr, redegrade(vol, factors), noise.sigma), mask, img_ras.affine,
                                 mask_name=mask_name, noise_sigma=noise.sigma)
        out.add("table1_consistency", scan.key, "", method, np.array([-1]),
                {"rms_z": [summary.rms_z], "pct_abs_z_gt3": [round(100.0 * summary.fraction_above, 4)]},
                CONSISTENCY_METRICS)


def _seed_sequence(seed: int, *labels: str) -> list[int]:
    """A seed per (run seed, scan, degradation): a scan's degradation does not depend on the others."""
    return [int(seed)] + [zlib.crc32(label.encode()) for label in labels]


def _lr_image(lr: np.ndarray, hr_ras, factors_down: tuple[float, float, float]):
    import nibabel as nib

    from .data.slicing import upsampled_affine

    return nib.Nifti1Image(lr.astype(np.float32), upsampled_affine(hr_ras.affine, factors_down))


def _brain_mask(hr_ras) -> np.ndarray:
    """deepbet's brain mask of an HR image (RAS), on its grid."""
    from .interfaces.brain_extraction import extract_brain

    _, mask_img, _ = extract_brain(hr_ras)
    return np.asarray(mask_img.dataobj) > 0


def _table2_sr(config: EvaluationConfig, scans: list[Scan], models: _Models, out: _Collector,
               params_log: dict[str, Any], bar=None) -> None:
    axes = _inplane_axes(config.plane)
    down = tuple(1.0 if a == PLANES[config.plane] else 1.0 / config.scale for a in range(3))
    metrics = ("psnr", "ssim", "psnr_mask", "ssim_mask")
    metrics_3d = ("psnr_3d", "ssim_3d", "psnr_3d_mask", "ssim_3d_mask")
    if config.brain_mask != "none":
        metrics += ("psnr_brain", "ssim_brain")
        metrics_3d += ("psnr_3d_brain", "ssim_3d_brain")
    for number, scan in enumerate(scans, 1):
        LOGGER.info("Table II (SR): %s (%d/%d), %s", scan.key, number, len(scans),
                    ", ".join(config.degradations))
        _, hr_ras, hr = _load_ras(scan.path)
        hr_ras = crop_to_scale(hr_ras, axes, config.scale)
        hr = hr[tuple(slice(0, n) for n in hr_ras.shape)]  # the same crop, as a view
        mask = foreground_mask(hr)
        hr01 = normalize_volume(hr, mask)
        brain = _brain_mask(hr_ras) if config.brain_mask == "deepbet" else None
        panel_slices = _panel_slices(select_slices(mask, config.plane, config.min_brain_fraction), config.n_panels)
        for name in config.degradations:
            _step(bar, f"Table II (SR) {scan.key} {name}")
            rng = np.random.default_rng(_seed_sequence(config.seed, scan.key, name))
            lr, params = get_degradation(name, config.scale, axes=axes)(hr01, rng)
            params_log.setdefault(scan.key, {})[name] = params.to_dict()
            outputs: dict[str, np.ndarray] = {}
            if config.bicubic:
                outputs[BICUBIC] = bicubic_upsample(lr, config.scale, axes=axes,
                                                    out_shape=[hr.shape[a] for a in axes])
            for label, bundle in models.labelled:
                outputs[label] = models.super_resolve(bundle, _lr_image(lr, hr_ras, down), label)
                if outputs[label].shape != hr.shape:
                    raise RuntimeError(f"{label}: output grid {outputs[label].shape} is not the HR's {hr.shape}")
            for method, sr in outputs.items():
                scores = reference_scores(hr01, sr, plane=config.plane, mask=mask,
                                          min_fraction=config.min_brain_fraction, brain_mask=brain)
                out.add("table2_sr", scan.key, name, method, scores["slice"], scores, metrics)
                for metric in metrics_3d:
                    out.add("table2_sr_3d", scan.key, name, method, np.array([-1]),
                            {metric: [scores[metric]]}, (metric,))
            for index in panel_slices:
                images = [(f"input LR ({name})", _nearest_view(take_slice(lr, config.plane, index), config.scale))]
                images += [(m, np.clip(take_slice(v, config.plane, index), 0, 1)) for m, v in outputs.items()]
                images.append(("ground truth", take_slice(hr01, config.plane, index)))
                path = config.out_dir / "panels" / f"{scan.key}_table2_{name}_{config.plane}-{index}.png"
                _save_panel(path, images, f"{scan.key}: HR degraded with {name}, {config.plane} slice {index}")
                out.panels.append(path)
            _step(bar)


def _table2_ds(config: EvaluationConfig, hr_scans: list[Scan], lr_scans: list[Scan], models: _Models,
               out: _Collector, notes: list[str], bar=None) -> None:
    axes = _inplane_axes(config.plane)
    lr_by_key = {s.key: s for s in lr_scans}
    for scan in hr_scans:
        if scan.key not in lr_by_key:
            continue
        _step(bar, f"Table II (DS) {scan.key}")
        hr_img, _, hr = _load_ras(scan.path)
        lr_img, _, real = _load_ras(lr_by_key[scan.key].path)
        expected = tuple(math.ceil(n / config.scale) if a in axes else n for a, n in enumerate(hr.shape))
        if real.shape != expected:
            notes.append(f"{scan.key}: real LR grid {real.shape} does not match the HR grid down-sampled "
                         f"({expected}); pair skipped (register and resample the pair first)")
            _step(bar)
            continue
        hr01 = normalize_volume(hr, foreground_mask(hr))
        mask = foreground_mask(real)
        real01 = normalize_volume(real, mask)
        synthetic = {}
        for name in config.degradations:
            rng = np.random.default_rng(_seed_sequence(config.seed, scan.key, name, "ds"))
            synthetic[name] = get_degradation(name, config.scale, axes=axes)(hr01, rng)[0]
        for label, bundle in models.labelled:
            if label in models.overrides:  # the same DSN again: output settings are the SRN's
                continue
            if getattr(bundle, "has_dsn", False):
                from .data.io import to_ras
                from .inference import degrade_image

                dsn_img, _ = degrade_image(hr_img, bundle, reference_lr=lr_img, plane=config.plane,
                                           device=models.device)
                synthetic[f"DSN ({label})"] = np.asarray(to_ras(dsn_img)[0].dataobj, dtype=np.float64)
        # the DSN drops the last LR voxel of an odd HR axis (degrade_image): compare on the common grid
        common = tuple(slice(0, min([real.shape[a]] + [v.shape[a] for v in synthetic.values()]))
                       for a in range(3))
        real01, mask = real01[common], mask[common]
        synthetic = {name: v[common] for name, v in synthetic.items()}
        for method, lr in synthetic.items():
            scores = reference_scores(real01, normalize_volume(lr, mask), plane=config.plane, mask=mask,
                                      min_fraction=config.min_brain_fraction, normalize=False)
            out.add("table2_ds", scan.key, "", method, scores["slice"], scores,
                    ("psnr", "ssim", "psnr_mask", "ssim_mask"))
        _step(bar)


def run_evaluation(config: EvaluationConfig) -> dict[str, Any]:
    """Run every table the datasets allow and write the outputs.

    Returns the rows of every table (by name), ``notes`` and ``panels`` (the PNG files written).
    """
    from . import __version__

    if config.num_threads:
        import torch

        torch.set_num_threads(int(config.num_threads))
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = _Models(config.models, scale=config.scale, plane=config.plane, device=config.device,
                     network_only=config.network_only)
    collector = _Collector()
    params_log: dict[str, Any] = {}
    notes: list[str] = []
    hr_scans = find_scans(config.hr_dir, config.participants) if config.hr_dir else []
    lr_scans = find_scans(config.lr_dir, config.participants) if config.lr_dir else []
    table1 = bool(lr_scans and config.no_reference_metrics)
    table2_sr = bool(hr_scans and config.degradations)
    pairs = len({s.key for s in hr_scans} & {s.key for s in lr_scans})
    # a bar over every scan (Table I, Table II DS) and scan x degradation (Table II SR), in a terminal
    bar = progress_bar(len(lr_scans) * table1 + len(hr_scans) * len(config.degradations) * table2_sr + pairs,
                       desc="evaluation", unit="step")
    try:
        if table1:
            _table1(config, lr_scans, models, collector, bar)
        if table2_sr:
            _table2_sr(config, hr_scans, models, collector, params_log, bar)
        if pairs:
            _table2_ds(config, hr_scans, lr_scans, models, collector, notes, bar)
    finally:
        if bar is not None:
            bar.close()

    test = config.test
    tables = {
        "table1": (collector.rows("table1", test=test), "",
                   "Table I: no-reference quality of real LR scans and their SR"),
        "table1_consistency": (collector.rows("table1_consistency", test=test), "",
                               "Table I (consistency): disagreement of each output with its scan, in noise levels "
                               f"(z), inside the {'brain (deepbet)' if config.brain_mask == 'deepbet' else 'head'}"
                               " mask, one value per volume; pure noise gives 0.27 % of |z| > 3"),
        "table2_sr": (collector.rows("table2_sr", "degradation", test=test), "degradation",
                      "Table II (SR): SR of synthetic LR vs HR ground truth, per 2D slice"),
        "table2_sr_3d": (collector.rows("table2_sr_3d", "degradation", test=test), "degradation",
                         "Table II (SR, 3D): one value per volume"),
        "table2_ds": (collector.rows("table2_ds", test=test), "",
                      "Table II (DS): synthetic LR vs real LR, per 2D slice"),
    }
    for name, (rows, group, title) in tables.items():
        _write_table(out_dir, name, rows, group=group, title=title,
                     unit="volumes" if name.endswith(("_3d", "_consistency")) else "slices")
    with open(out_dir / "slices.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["table", "scan", "group", "method", "slice", "metric", "value"])
        writer.writeheader()
        writer.writerows(collector.long_rows)
    if table2_sr:
        (out_dir / "degradation_params.json").write_text(json.dumps(params_log, indent=2))
    provenance = {
        "ddasr_nipype_version": __version__,
        "config": config.to_dict(),
        "models": [{"name": b.name, "label": label, "sha256": b.sha256} for label, b in models.labelled],
        "hr_scans": [s.key for s in hr_scans],
        "lr_scans": [s.key for s in lr_scans],
        "notes": notes,
    }
    (out_dir / "evaluation.json").write_text(json.dumps(provenance, indent=2))
    return ({name: rows for name, (rows, _, _) in tables.items()}
            | {"notes": notes, "panels": [str(p) for p in collector.panels]})


# --------------------------------------------------------------------------------------------
# One image, for the QualityMetrics node


def quality_metrics_file(
    in_file: str | Path,
    *,
    reference_file: str | Path | None = None,
    mask_file: str | Path | None = None,
    plane: str = "sagittal",
    no_reference_metrics: Sequence[str] = ("niqe", "brisque"),
    min_brain_fraction: float = 0.1,
    niqe_block_size: int = 96,
) -> dict[str, Any]:
    """Slice-wise quality metrics of one image (and against a reference on the same grid).

    Returns a flat dictionary: ``plane``, ``n_slices``, ``<metric>_mean`` / ``<metric>_std`` for
    the no-reference metrics and, with ``reference_file``, for ``psnr``, ``ssim``, ``psnr_mask``,
    ``ssim_mask`` plus the 3D values ``psnr_3d``, ``ssim_3d``, ``psnr_3d_mask``, ``ssim_3d_mask``.
    The mask (``mask_file`` or the Otsu foreground of the reference, else of ``in_file``) selects
    slices and restricts the masked metrics.
    """
    from .errors import InvalidImageError

    _, _, data = _load_ras(Path(in_file))
    ref = None
    if reference_file is not None:
        _, _, ref = _load_ras(Path(reference_file))
        if ref.shape != data.shape:
            raise InvalidImageError(reference_file, f"grid {ref.shape} differs from the image's {data.shape}")
    if mask_file is not None:
        _, _, mask_data = _load_ras(Path(mask_file))
        if mask_data.shape != data.shape:
            raise InvalidImageError(mask_file, f"mask grid {mask_data.shape} differs from the image's {data.shape}")
        mask = mask_data > 0
    else:
        mask = foreground_mask(data if ref is None else ref)
    result: dict[str, Any] = {"plane": plane, "min_brain_fraction": min_brain_fraction,
                              "n_slices": int(select_slices(mask, plane, min_brain_fraction).size)}
    if no_reference_metrics:
        scores = no_reference_scores(normalize_volume(data, mask), plane=plane, mask=mask,
                                     metrics=no_reference_metrics, min_fraction=min_brain_fraction,
                                     niqe_block_size=niqe_block_size)
        for metric in no_reference_metrics:
            result[f"{metric}_mean"], result[f"{metric}_std"], _ = summarize(scores[metric])
    if ref is not None:
        scores = reference_scores(ref, data, plane=plane, mask=mask, min_fraction=min_brain_fraction)
        for metric in ("psnr", "ssim", "psnr_mask", "ssim_mask"):
            result[f"{metric}_mean"], result[f"{metric}_std"], _ = summarize(scores[metric])
        for metric in ("psnr_3d", "ssim_3d", "psnr_3d_mask", "ssim_3d_mask"):
            result[metric] = float(scores[metric])
    return result
