"""Reportlets for the per-subject HTML report.

:class:`BeforeAfter` writes the before/after panel (an SVG in the fMRIPrep look: hover over it to flicker
between the input and the output) straight from the voxels, in about a second, where niworkflows'
``SimpleBeforeAfterRPT`` took 10-50 s through nilearn and matplotlib's vector back end;
:class:`SRSummary` writes the HTML summary panel, :class:`ConsistencyReport` and :class:`ZoomedCrops` the
data-consistency section.
"""

from __future__ import annotations

import html

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
__all__ = ["BeforeAfter", "before_after_svg", "SRSummary", "summary_html", "ConsistencyReport", "consistency_html",
           "ZoomedCrops", "crops_html"]

#: colour scale of the z-map overlays (|z| beyond it saturates) and the |z| below which nothing is drawn
Z_LIMIT = 6.0
Z_SHOWN = 2.0


def _mask_on(image, mask_file):
    """The mask in ``mask_file`` when it is on ``image``'s grid, else ``image``'s head (Otsu foreground)."""
    from ..metrics.volume import foreground_mask

    if mask_file:
        _, mask_data = _ras(mask_file)
        if mask_data.shape == image.shape:
            return mask_data > 0
    return foreground_mask(image)


def _opt(value):
    """A node input's value, or ``None`` when it is not set."""
    return value if isdefined(value) else None


def _fmt_vec(values, unit: str = "") -> str:
    return " &times; ".join(f"{float(v):g}" for v in values) + unit


def summary_html(metadata: dict, *, source_file: str | None = None,
                 mask_info: dict | None = None, metrics: dict | None = None,
                 metrics_before: dict | None = None, metrics_after: dict | None = None) -> str:
    """The summary panel: input and output grids, model (name, sha256), planes, device, runtime."""
    esc = html.escape
    rows = []
    if source_file:
        rows.append(("Input", f"<code>{esc(str(source_file))}</code>"))
    if "input_shape" in metadata:
        rows.append(("Input grid", f"{_fmt_vec(metadata['input_shape'])} voxels of "
                     f"{_fmt_vec(metadata['input_voxel_size_mm'], ' mm')}"))
    if "output_shape" in metadata:
        rows.append(("Output grid", f"{_fmt_vec(metadata['output_shape'])} voxels of "
                     f"{_fmt_vec(metadata['output_voxel_size_mm'], ' mm')}"))
    rows.append(("Model", f"{esc(str(metadata.get('model_name')))} "
                 f"(sha256 <code>{esc(str(metadata.get('model_sha256', ''))[:16])}&hellip;</code>)"))
    if "output" in metadata:
        out = metadata["output"]
        rows.append(("Output", f"network weight {float(out['strength']):g} against bicubic "
                     f"interpolation; air around the head from the "
                     f"{'interpolated input' if out['background'] == 'input' else 'network'}"
                     + (f"; input denoised across slices first (h = {float(out['slice_denoise']):g} x its "
                        "noise level)" if out.get("slice_denoise") else "")
                     + (f"; each output slice projected onto its input slice ({esc(str(out['projection']))} "
                        "model)" if out.get("projection", "none") != "none" else "")))
    rows.append(("Scale / planes", f"x{metadata.get('scale')} / {esc(str(metadata.get('planes')))}"))
    for message in metadata.get("warnings") or ():
        rows.append(('<span style="color: #b35900">Warning</span>', esc(str(message))))
    rows.append(("Device / runtime", f"{esc(str(metadata.get('device')))} / "
                 f"{float(metadata.get('runtime_s', 0.0)):.1f} s"))
    if mask_info:
        rows.append(("Brain mask", f"{esc(str(mask_info.get('backend')))}, "
                     f"{mask_info.get('mask_volume_ml', '?')} ml"))
    for key, value in (metrics or {}).items():
        rows.append((esc(str(key)), esc(f"{value:.4g}" if isinstance(value, float) else str(value))))
    for name in ("niqe", "brisque"):  # QualityMetrics of the input and of the output
        before = (metrics_before or {}).get(f"{name}_mean")
        after = (metrics_after or {}).get(f"{name}_mean")
        if before is not None and after is not None:
            rows.append((f"{name.upper()} (lower is better)",
                         f"input {before:.2f} &rarr; super-resolved {after:.2f}"))
    body = "\n".join(f"\t\t<li><strong>{k}:</strong> {v}</li>" for k, v in rows)
    return f'<h3 class="elem-title">Summary</h3>\n\t<ul class="elem-desc">\n{body}\n\t</ul>\n'


class _SRSummaryInputSpec(BaseInterfaceInputSpec):
    metadata = traits.Dict(mandatory=True, desc="SuperResolve's metadata dictionary")
    source_file = traits.Str(desc="the input T1w (shown in the summary)")
    mask_info = traits.Dict(desc="BrainExtraction's info dictionary")
    metrics = traits.Dict(desc="optional extra values to list (name: value)")
    metrics_before = traits.Dict(desc="QualityMetrics of the input (NIQE/BRISQUE means are shown)")
    metrics_after = traits.Dict(desc="QualityMetrics of the super-resolved image")


class _ReportletOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="HTML fragment (or SVG) for the report")


class _Reportlet(SimpleInterface):
    """A report section: the text :meth:`_render` returns, written to ``report<extension>`` in the
    node's folder (``out_report``)."""

    output_spec = _ReportletOutputSpec
    extension = ".html"

    def _render(self) -> str:
        raise NotImplementedError

    def _run_interface(self, runtime):
        from pathlib import Path

        out_report = str(Path(runtime.cwd) / f"report{self.extension}")
        Path(out_report).write_text(self._render())
        self._results["out_report"] = out_report
        return runtime


class SRSummary(_Reportlet):
    """Write the super-resolution summary panel of the HTML report.

    >>> summary = SRSummary(metadata={"model_name": "ixi-t1w-x2", "scale": 2})
    >>> summary.inputs.metadata["scale"]
    2
    """

    input_spec = _SRSummaryInputSpec

    def _render(self) -> str:
        return summary_html(
            self.inputs.metadata, source_file=_opt(self.inputs.source_file),
            mask_info=_opt(self.inputs.mask_info), metrics=_opt(self.inputs.metrics),
            metrics_before=_opt(self.inputs.metrics_before),
            metrics_after=_opt(self.inputs.metrics_after),
        )


# --------------------------------------------------------------------------------------------
# Before/after panel


def _slice_on(target_affine, target_shape, source_affine, source, axis: int, index: int):
    """Slice ``index`` across ``axis`` of the target grid, filled with the nearest voxel of ``source``
    (0 outside its field of view): the two images of a before/after pair compared at the same points
    whatever their grids. Returns an (n_h, n_v) array, h and v the other two axes in increasing order."""
    import numpy as np

    h_axis, v_axis = (a for a in range(3) if a != axis)
    ih, iv = np.meshgrid(np.arange(target_shape[h_axis]), np.arange(target_shape[v_axis]), indexing="ij")
    vox = np.empty((3,) + ih.shape)
    vox[axis], vox[h_axis], vox[v_axis] = index, ih, iv
    m = np.linalg.inv(source_affine) @ target_affine
    src = np.rint(np.tensordot(m[:3, :3], vox, axes=1) + m[:3, 3, None, None]).astype(np.int64)
    inside = np.logical_and.reduce([(src[k] >= 0) & (src[k] < source.shape[k]) for k in range(3)])
    out = np.zeros(ih.shape, dtype=np.float32)
    out[inside] = source[src[0][inside], src[1][inside], src[2][inside]]
    return out


def _cut(volume, axis: int, index: int):
    """Slice ``index`` across ``axis`` of a 3D array, the other two axes in order: a view (``np.take``
    copies the whole plane, 3-4 ms per cut of an SR volume)."""
    return volume[(slice(None),) * axis + (index,)]


def _bounds(mask):
    """First and last voxel of a 3D mask on each axis (the whole grid when it is empty), from the
    mask's projections (no list of its voxels)."""
    import numpy as np

    if not mask.any():
        return np.zeros(mask.ndim, dtype=int), np.array(mask.shape) - 1
    lo, hi = [], []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        lo.append(present[0])
        hi.append(present[-1])
    return np.array(lo), np.array(hi)


def _head_bounds(data, mask, *, level: float = 0.1, fraction: float = 0.005):
    """First and last voxel on each axis of the planes with more than ``fraction`` of the fullest plane's
    count of voxels above ``level`` x the 99.5th percentile in ``mask`` (and of ``mask``'s own bounds):
    the head's box, robust to stray bright background voxels."""
    import numpy as np

    bright = data > level * _window(data, mask)[1]
    lo, hi = _bounds(mask)
    for axis in range(3):
        counts = bright.sum(axis=tuple(a for a in range(3) if a != axis))
        kept = np.flatnonzero(counts > fraction * counts.max()) if counts.max() else np.array([], dtype=int)
        if kept.size:
            lo[axis], hi[axis] = min(lo[axis], kept[0]), max(hi[axis], kept[-1])
    return lo, hi


def _png_uri(rgb) -> str:
    """An (h, w, 3) RGB or (h, w) grey uint8 array as a base64 PNG data URI (Pillow, which matplotlib
    already needs; no matplotlib import)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    # zlib level 3: smaller than 6 on these panels (1.05 vs 1.24 MB for the before/after SVG) and faster
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _outline(mask2d):
    """Pixels of a 2D mask with a 4-neighbour outside it."""
    import numpy as np

    padded = np.pad(mask2d, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask2d & ~interior


def before_after_svg(before_file, after_file, *, mask_file=None, n_cuts: int = 7, before_label: str = "Input",
                     after_label: str = "DDASR", width: int = 1100) -> str:
    """The before/after panel: ``n_cuts`` sagittal, coronal and axial slices of ``after_file`` and, at the
    same points of space, of ``before_file`` (nearest neighbour: its voxels as they are), each with its own
    grey scale (0.5-99.5th percentile of its slices shown, in the mask), the outline of ``mask_file`` (on the after grid; else
    the Otsu head) and the slice position in mm. An SVG with the two as layers, the after one on top;
    hovering makes it flicker, as fMRIPrep's reports do. Voxels drawn with their true aspect ratio."""
    import uuid

    import numpy as np
    from nibabel.affines import apply_affine, voxel_sizes

    before_ras, before = _ras(before_file)
    after_ras, after = _ras(after_file)
    mask = _mask_on(after, mask_file)
    lo, hi = _bounds(mask)
    head_lo, head_hi = _head_bounds(after, mask)  # the panels show the whole head
    zooms = voxel_sizes(after_ras.affine)
    views, cut_labels = [], []
    for axis in range(3):
        h_axis, v_axis = (a for a in range(3) if a != axis)
        margin_h, margin_v = (int(np.ceil(4.0 / zooms[a])) for a in (h_axis, v_axis))
        crop = (slice(max(head_lo[h_axis] - margin_h, 0), head_hi[h_axis] + margin_h + 1),
                slice(max(head_lo[v_axis] - margin_v, 0), head_hi[v_axis] + margin_v + 1))
        cuts = []
        for index in np.round(lo[axis] + (hi[axis] - lo[axis]) * np.linspace(0.12, 0.88, n_cuts)).astype(int):
            in_mask = _cut(mask, axis, index)[crop]
            cuts.append((_cut(after, axis, index)[crop],
                         _slice_on(after_ras.affine, after.shape, before_ras.affine, before, axis, index)[crop],
                         in_mask))
            centre = (lo + hi) / 2.0
            centre[axis] = index
            cut_labels.append((axis, "xyz"[axis] + f"={apply_affine(after_ras.affine, centre)[axis]:.0f}"))
        views.append((cuts, zooms[h_axis], zooms[v_axis]))
    windows = {}
    for which, column in (("after", 0), ("before", 1)):
        shown = [(cut[column], cut[2]) for cuts, _, _ in views for cut in cuts]
        values = np.concatenate([image[in_mask] for image, in_mask in shown])
        windows[which] = _window(values if values.size else np.concatenate([i.ravel() for i, _ in shown]), None)
    rows = {"before": [], "after": []}
    for cuts, zh, zv in views:
        for which, column in (("after", 0), ("before", 1)):
            low, high = windows[which]
            panels = []
            for cut in cuts:
                rgb = np.repeat(_grey8(cut[column], low, high)[..., None], 3, axis=-1)
                rgb[_outline(cut[2])] = (255, 64, 32)
                panels += [rgb.transpose(1, 0, 2)[::-1], np.zeros((rgb.shape[1], 2, 3), dtype=np.uint8)]
            rows[which].append((np.concatenate(panels[:-1], axis=1), zh, zv))  # rows: v from the top down
    gap, label_h = 6.0, 14.0
    layers, y = {"before": [], "after": []}, 0.0
    heights = []
    for row in range(3):
        pixels, zh, zv = rows["after"][row]
        height = width * pixels.shape[0] * zv / (pixels.shape[1] * zh)
        heights.append((y, height))
        for which in ("before", "after"):
            uri = _png_uri(rows[which][row][0])
            layers[which].append(
                f'<image x="0" y="{y:.1f}" width="{width}" height="{height:.1f}" preserveAspectRatio="none" '
                f'xlink:href="{uri}"/>')
        y += height + label_h + gap
    for which, label in (("before", before_label), ("after", after_label)):
        for row, (y0, height) in enumerate(heights):
            layers[which].append(
                f'<text x="4" y="{y0 + 13:.1f}" fill="#ffffff" font-size="12" font-family="sans-serif" '
                f'font-weight="bold">{html.escape(label)}: {_VIEW_NAMES[row]}</text>')
            cuts = [text for axis, text in cut_labels if axis == row]
            for col, text in enumerate(cuts):
                layers[which].append(
                    f'<text x="{(col + 0.5) * width / len(cuts):.1f}" y="{y0 + height + 12:.1f}" fill="#cccccc" '
                    f'font-size="10" font-family="sans-serif" text-anchor="middle">{text} mm</text>')
    uid = uuid.uuid4().hex
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" version="1.1" '
        f'viewBox="0 0 {width} {y - gap:.1f}" preserveAspectRatio="xMidYMid meet">\n'
        f'<style type="text/css">\n@keyframes flicker{uid} {{ 0% {{opacity: 1;}} 100% {{opacity: 0;}} }}\n'
        f'.foreground-svg {{ animation: 1s ease-in-out 0s alternate none infinite paused flicker{uid}; }}\n'
        '.foreground-svg:hover { animation-play-state: running; }\n</style>\n'
        f'<rect x="0" y="0" width="{width}" height="{y - gap:.1f}" fill="#000000"/>\n'
        '<g class="background-svg">\n' + "\n".join(layers["before"]) + '\n</g>\n'
        '<g class="foreground-svg">\n<rect x="0" y="0" width="100%" height="100%" fill="#000000"/>\n'
        + "\n".join(layers["after"]) + '\n</g>\n</svg>\n'
    )


class _BeforeAfterInputSpec(BaseInterfaceInputSpec):
    before = File(exists=True, mandatory=True, desc="the input T1w")
    after = File(exists=True, mandatory=True, desc="the super-resolved T1w")
    mask_file = File(exists=True, desc="brain mask on the super-resolved grid (outline, slice range)")
    before_label = traits.Str("Input", usedefault=True, desc="name of the before layer")
    after_label = traits.Str("DDASR", usedefault=True, desc="name of the after layer")
    n_cuts = traits.Int(7, usedefault=True, desc="slices per view")


class BeforeAfter(_Reportlet):
    """The before/after SVG panel of the report (:func:`before_after_svg`).

    >>> BeforeAfter(n_cuts=5).inputs.after_label
    'DDASR'
    """

    input_spec = _BeforeAfterInputSpec
    extension = ".svg"

    def _render(self) -> str:
        return before_after_svg(
            self.inputs.before, self.inputs.after, mask_file=_opt(self.inputs.mask_file),
            n_cuts=self.inputs.n_cuts, before_label=self.inputs.before_label,
            after_label=self.inputs.after_label)


# --------------------------------------------------------------------------------------------
# Data consistency and zoomed crops


def _grey8(image, low: float, high: float):
    """``image`` as uint8 grey levels: ``low`` black, ``high`` white, clipped."""
    import numpy as np

    span = high - low if high > low else 1.0
    return (np.clip((np.asarray(image, dtype=np.float32) - low) / span, 0, 1) * 255).astype(np.uint8)


def _png_grey_uri(image, *, vmin: float, vmax: float) -> str:
    """A 2D array written pixel for pixel as a grey PNG data URI (``vmin`` black, ``vmax`` white)."""
    return _png_uri(_grey8(image, vmin, vmax))


def _window(data, mask):
    import numpy as np

    values = data[mask] if mask is not None and mask.any() else data[data > 0]
    if values.size == 0:
        values = data.ravel()
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    return low, high if high > low else low + 1.0


def _ras(path):
    import numpy as np

    from ..data.io import load_volume, to_ras

    img_ras, _ = to_ras(load_volume(path))
    return img_ras, np.asarray(img_ras.dataobj, dtype=np.float32)


def _slice_view(vol, axis: int, index: int):
    """The 2D slice of a RAS volume across ``axis`` (a view), transposed: rows the vertical axis."""
    return _cut(vol, axis, int(index)).T


_VIEW_NAMES = ("sagittal", "coronal", "axial")


def _figures_rows(summary: dict, label: str) -> list[tuple[str, str]]:
    esc = html.escape
    rows = [(f"{label}: RMS z in the {esc(summary['mask'])}",
             f"{summary['rms_z']:.2f} (median {summary['median_z']:+.2f}; {summary['mask_voxels']} voxels)"),
            (f"{label}: |z| &gt; {summary['threshold']:g}",
             f"{100 * summary['fraction_above']:.2f} % of the {esc(summary['mask'])} voxels "
             f"({summary['n_clusters']} cluster{'s' if summary['n_clusters'] != 1 else ''}; 0.27 % expected "
             "from noise alone)")]
    cluster = summary.get("largest_cluster")
    if cluster:
        rows.append((f"{label}: largest cluster",
                     f"{cluster['voxels']} voxels ({cluster['volume_mm3']:g} mm&sup3;), peak z "
                     f"{cluster['peak_z']:+.1f} at ({', '.join(f'{v:.1f}' for v in cluster['peak_mm'])}) mm, "
                     f"centre ({', '.join(f'{v:.1f}' for v in cluster['centre_mm'])}) mm (scanner coordinates)"))
    for note in summary.get("notes") or ():
        rows.append((f'<span style="color: #b35900">{label}: note</span>', esc(str(note))))
    return rows


def _z_lut():
    """RdBu_r as 256 RGB rows (uint8): the z colour scale from -Z_LIMIT to +Z_LIMIT."""
    import matplotlib  # the colour maps only: no figure, no pyplot
    import numpy as np

    return (matplotlib.colormaps["RdBu_r"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def _z_panel(grey_slice, z_slice, mask_slice, window, lut, *, ring=None):
    """One panel of the consistency section as RGB pixels, top row first: the output in grey, z over it
    where |z| >= Z_SHOWN inside the mask, the mask's outline in yellow and, with ``ring`` (a boolean
    image), that ring in green. Inputs are ``_slice_view`` slices (rows: the vertical axis, bottom up)."""
    import numpy as np

    rgb = np.repeat(_grey8(grey_slice, *window)[..., None], 3, axis=-1)
    shown = (np.abs(z_slice) >= Z_SHOWN) & mask_slice
    index = np.clip(np.round((z_slice[shown] + Z_LIMIT) / (2 * Z_LIMIT) * 255), 0, 255).astype(np.intp)
    rgb[shown] = lut[index]
    rgb[_outline(mask_slice)] = (229, 193, 0)
    if ring is not None:
        rgb[ring] = (0, 255, 102)
    return rgb[::-1]


def consistency_html(sr_file, zmap_sr_file, metadata: dict, *, mask_file=None, n_slices: int = 6) -> str:
    """The report section of the consistency map: the physics z-map over the super-resolved T1w on
    ``n_slices`` sagittal, coronal and axial slices through the brain (and the three through the peak of
    the largest cluster, circled), then the figures of every map in ``metadata`` (DataConsistency's).
    Each panel is a PNG of the voxels (Pillow; no matplotlib figure), shown with the voxels' aspect."""
    import numpy as np
    from nibabel.affines import apply_affine, voxel_sizes

    sr_ras, sr = _ras(sr_file)
    _, z = _ras(zmap_sr_file)
    if z.shape != sr.shape:
        raise ValueError(f"z-map grid {z.shape} differs from the super-resolved image's {sr.shape}")
    mask = _mask_on(sr, mask_file)
    window = _window(sr, mask)
    zooms = voxel_sizes(sr_ras.affine)
    lo, hi = _bounds(mask)
    physics = metadata["physics"]
    cluster = physics.get("largest_cluster")
    peak = None
    if cluster:
        peak = np.clip(np.round(apply_affine(np.linalg.inv(sr_ras.affine), cluster["peak_mm"])).astype(int), 0,
                       np.array(sr.shape) - 1)
    lut = _z_lut()
    panel_mm = max(float(n * zoom) for n, zoom in zip(sr.shape, zooms))  # one scale for every panel
    rows_html = []
    for row in range(3 + (peak is not None)):
        figures = []
        for col in range(n_slices if row < 3 else 3):
            if row < 3:
                axis = row
                index = int(round(lo[axis] + (hi[axis] - lo[axis]) * (0.15 + 0.7 * col / max(n_slices - 1, 1))))
                title = f"{_VIEW_NAMES[axis]} {index}"
            else:
                axis, index = col, int(peak[col])
                title = f"largest cluster, {_VIEW_NAMES[axis]}"
            h_axis, v_axis = (a for a in range(3) if a != axis)
            ring = None
            if row == 3:  # a circle of 8 mm around the peak
                v, h = np.meshgrid(np.arange(sr.shape[v_axis]), np.arange(sr.shape[h_axis]), indexing="ij")
                dist = np.hypot((h - peak[h_axis]) * zooms[h_axis], (v - peak[v_axis]) * zooms[v_axis])
                ring = np.abs(dist - 8.0) <= 0.6 * min(zooms[h_axis], zooms[v_axis])
            rgb = _z_panel(_slice_view(sr, axis, index), _slice_view(z, axis, index),
                           _slice_view(mask, axis, index), window, lut, ring=ring)
            width = 190.0 * sr.shape[h_axis] * zooms[h_axis] / panel_mm
            height = 190.0 * sr.shape[v_axis] * zooms[v_axis] / panel_mm
            figures.append(
                f'<figure style="display: inline-block; margin: 0 2px 4px 0; text-align: center">'
                f'<img src="{_png_uri(rgb)}" width="{width:.0f}" height="{height:.0f}" alt="{title}">'
                f'<figcaption style="color: #ffffff; font-size: 11px">{title}</figcaption></figure>')
        rows_html.append("<div>" + "".join(figures) + "</div>")
    bar = _png_uri(np.repeat(lut[None], 10, axis=0))
    scale = (
        f'<div style="color: #ffffff; font-size: 11px; padding: 4px 0">z (output - data) / noise: '
        f'&minus;{Z_LIMIT:g} <img src="{bar}" width="256" height="10" alt="z colour scale" '
        f'style="vertical-align: middle"> +{Z_LIMIT:g} (blank where |z| &lt; {Z_SHOWN:g})</div>')
    rows = [("Noise level of the input", f"{metadata['noise']['sigma']:.4g} (input intensity units; "
             f"{html.escape(metadata['noise']['method'])})")]
    rows += _figures_rows(physics, "Physics (area average)")
    if metadata.get("dsn"):
        rows += _figures_rows(metadata["dsn"], "DSN")
    for note in metadata.get("notes") or ():
        rows.append(("Note", html.escape(str(note))))
    items = "\n".join(f"\t\t<li><strong>{k}:</strong> {v}</li>" for k, v in rows)
    return (
        '<h3 class="elem-title">Where the output disagrees with the data</h3>\n'
        '\t<p class="elem-desc">The super-resolved T1w was averaged back over each input voxel, the input was '
        "subtracted and the difference divided by the input's noise level: z. Shown where |z| &ge; "
        f"{Z_SHOWN:g} inside the {html.escape(physics['mask'])} mask (yellow outline; red: the output is "
        f"brighter than the data allow, blue: darker), over the output. |z| &gt; {physics['threshold']:g} "
        "means a disagreement that noise cannot explain: detail the network invented or removed, or a "
        "misalignment.</p>\n"
        '\t<div style="background: #000000; padding: 4px">\n\t\t' + "\n\t\t".join(rows_html) + "\n\t\t"
        + scale + "\n\t</div>\n"
        f'\t<ul class="elem-desc">\n{items}\n\t</ul>\n'
    )


def _crop_box(centre, shape, size: int):
    """Start/stop of a ``size``-long window on each axis around ``centre``, kept inside ``shape``."""
    out = []
    for c, n in zip(centre, shape):
        length = min(size, n)
        start = int(min(max(int(c) - length // 2, 0), n - length))
        out.append(slice(start, start + length))
    return tuple(out)


def crops_html(in_file, sr_file, *, metadata: dict | None = None, mask_file=None, size: int = 64,
               zoom: int = 3) -> str:
    """Zoomed crops at native scale: the input (nearest neighbour), its bicubic interpolation and the
    super-resolved T1w, ``size`` x ``size`` output voxels each, every voxel drawn as ``zoom`` x ``zoom`` screen
    pixels (no smoothing), in the super-resolved plane. One crop in a hemisphere's cortex, and one at the
    peak of the largest inconsistency cluster when ``metadata`` (DataConsistency's) has one."""
    import numpy as np
    from nibabel.affines import apply_affine, voxel_sizes

    from ..consistency import grid_factors, upsample_nearest
    from ..degradations import bicubic_upsample_volume

    lr_ras, lr = _ras(in_file)
    sr_ras, sr = _ras(sr_file)
    factors = grid_factors(lr_ras.shape, lr_ras.affine, sr_ras.shape, sr_ras.affine)
    if max(factors) == 1:
        raise ValueError("the super-resolved image is on the input's own grid: nothing to zoom into")
    views = [a for a in range(3) if all(factors[b] > 1 for b in range(3) if b != a)]
    axis = views[0] if views else int(np.argmin(factors))  # the SR plane (sagittal first)
    nearest = upsample_nearest(lr, factors)
    mask = _mask_on(sr, mask_file)
    low, high = _window(nearest, mask)
    h_axis, v_axis = (a for a in range(3) if a != axis)
    zooms = voxel_sizes(sr_ras.affine)
    lo, hi = _bounds(mask)
    centres = []
    cortex = (lo + hi) // 2
    cortex[axis] = int(lo[axis] + 0.3 * (hi[axis] - lo[axis]))  # a hemisphere, off the midline
    in_slice = np.argwhere(_cut(mask, axis, cortex[axis]))
    if in_slice.size:  # towards the top of the brain in that slice: cortex
        top = in_slice[:, 1].max()
        cortex[h_axis] = int(np.median(in_slice[:, 0]))
        cortex[v_axis] = int(max(top - size // 2, in_slice[:, 1].min()))
    centres.append(("hemisphere", cortex))
    cluster = ((metadata or {}).get("physics") or {}).get("largest_cluster")
    if cluster:
        peak = np.clip(np.round(apply_affine(np.linalg.inv(sr_ras.affine), cluster["peak_mm"])).astype(int), 0,
                       np.array(sr.shape) - 1)
        centres.append((f"largest inconsistency cluster (peak z {cluster['peak_z']:+.1f})", peak))
    figures = []
    for name, centre in centres:
        box = list(_crop_box(centre, sr.shape, size))
        box[axis] = slice(int(centre[axis]), int(centre[axis]) + 1)
        panels = []
        bicubic = bicubic_upsample_volume(lr, factors, region=tuple(box))  # only the crop's voxels
        for label, crop in (("input (nearest)", nearest[tuple(box)]), ("bicubic", bicubic),
                            ("super-resolved", sr[tuple(box)])):
            crop = np.squeeze(crop, axis=axis).T[::-1]  # vertical axis up
            pixels = np.kron(crop, np.ones((zoom, zoom), dtype=np.float32))
            uri = _png_grey_uri(pixels, vmin=low, vmax=high)
            panels.append(
                f'<figure style="display: inline-block; margin: 0 6px 6px 0">'
                f'<img src="{uri}" width="{pixels.shape[1]}" height="{pixels.shape[0]}" '
                f'style="image-rendering: pixelated" alt="{label}"><figcaption>{label}</figcaption></figure>')
        where = apply_affine(sr_ras.affine, centre)
        figures.append(
            f"\t<p class=\"elem-desc\"><strong>{html.escape(name)}</strong>: {_VIEW_NAMES[axis]} slice "
            f"{int(centre[axis])}, centred at ({', '.join(f'{v:.1f}' for v in where)}) mm</p>\n\t<div>"
            + "".join(panels) + "</div>\n")
    square = abs(zooms[h_axis] - zooms[v_axis]) < 1e-3
    return (
        '<h3 class="elem-title">Zoomed crops at native scale</h3>\n'
        f'\t<p class="elem-desc">{size} x {size} voxels of the super-resolved grid '
        f"({zooms[h_axis]:.3g} x {zooms[v_axis]:.3g} mm each), every voxel drawn as {zoom} x {zoom} screen pixels "
        "without smoothing; the same grey scale in the three panels. Input: each input voxel repeated "
        "(nearest neighbour); bicubic: the bicubic interpolation of the input; super-resolved: the output."
        + ("" if square else " The voxels are not square: the crops are stretched.") + "</p>\n"
        + "".join(figures)
    )


class _ConsistencyReportInputSpec(BaseInterfaceInputSpec):
    sr_file = File(exists=True, mandatory=True, desc="the super-resolved T1w")
    zmap_sr_file = File(exists=True, mandatory=True, desc="the physics z-map on the super-resolved grid")
    metadata = traits.Dict(mandatory=True, desc="DataConsistency's metadata")
    mask_file = File(exists=True, desc="brain mask on the super-resolved grid (outline, slice range)")


class ConsistencyReport(_Reportlet):
    """The data-consistency section of the report (:func:`consistency_html`).

    >>> ConsistencyReport(metadata={}).inputs.metadata
    {}
    """

    input_spec = _ConsistencyReportInputSpec

    def _render(self) -> str:
        return consistency_html(self.inputs.sr_file, self.inputs.zmap_sr_file, self.inputs.metadata,
                                mask_file=_opt(self.inputs.mask_file))


class _ZoomedCropsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the input T1w")
    sr_file = File(exists=True, mandatory=True, desc="the super-resolved T1w")
    metadata = traits.Dict(desc="DataConsistency's metadata (a crop at its largest cluster)")
    mask_file = File(exists=True, desc="brain mask on the super-resolved grid (where to crop)")
    size = traits.Int(64, usedefault=True, desc="crop edge in super-resolved voxels")
    zoom = traits.Int(3, usedefault=True, desc="screen pixels per voxel")


class ZoomedCrops(_Reportlet):
    """Zoomed before/after crops at native scale for the report (:func:`crops_html`).

    >>> ZoomedCrops(size=48).inputs.zoom
    3
    """

    input_spec = _ZoomedCropsInputSpec

    def _render(self) -> str:
        return crops_html(self.inputs.in_file, self.inputs.sr_file, metadata=_opt(self.inputs.metadata),
                          mask_file=_opt(self.inputs.mask_file), size=self.inputs.size, zoom=self.inputs.zoom)
