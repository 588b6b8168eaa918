"""Reportlets for the per-subject HTML report.

The before/after and mask panels use niworkflows' own reportlets (``SimpleBeforeAfterRPT``,
``SimpleShowMaskRPT``: SVG, the fMRIPrep look); :class:`SRSummary` writes the HTML summary panel.
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
__all__ = ["SRSummary", "summary_html"]


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
                     f"{'interpolated input' if out['background'] == 'input' else 'network'}"))
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


class _SRSummaryOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="HTML fragment for the report")


class SRSummary(SimpleInterface):
    """Write the super-resolution summary panel of the HTML report.

    >>> summary = SRSummary(metadata={"model_name": "ixi-t1w-x2", "scale": 2})
    >>> summary.inputs.metadata["scale"]
    2
    """

    input_spec = _SRSummaryInputSpec
    output_spec = _SRSummaryOutputSpec

    def _run_interface(self, runtime):
        from pathlib import Path

        def _opt(value):
            return value if isdefined(value) else None

        out_report = str(Path(runtime.cwd) / "report.html")
        Path(out_report).write_text(summary_html(
            self.inputs.metadata, source_file=_opt(self.inputs.source_file),
            mask_info=_opt(self.inputs.mask_info), metrics=_opt(self.inputs.metrics),
            metrics_before=_opt(self.inputs.metrics_before),
            metrics_after=_opt(self.inputs.metrics_after),
        ))
        self._results["out_report"] = out_report
        return runtime
