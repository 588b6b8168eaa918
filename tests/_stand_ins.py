"""Fast stand-ins for slow parts of the app that a test does not examine (clearly test fixtures)."""

from __future__ import annotations

from pathlib import Path

from nipype.interfaces.base import BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec


class _QuickBeforeAfterInputSpec(BaseInterfaceInputSpec):
    before = File(exists=True, mandatory=True, desc="the input")
    after = File(exists=True, mandatory=True, desc="the super-resolved image")
    wm_seg = File(exists=True, desc="the brain mask")


class _QuickBeforeAfterOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="an SVG")


class QuickBeforeAfter(SimpleInterface):
    """Stands in for the app's before/after SVG reportlet (``workflows.base._before_after``: 10-50 s a
    participant on the 2-core test machine); it checks that both images are 3D (or 4D with one
    volume, as nilearn takes them) and writes an empty SVG."""

    input_spec = _QuickBeforeAfterInputSpec
    output_spec = _QuickBeforeAfterOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib

        for image in (self.inputs.before, self.inputs.after):
            shape = nib.load(image).shape
            if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
                raise ValueError(f"{image}: not a 3D image (shape {shape})")
        self._results["out_report"] = str(Path(runtime.cwd) / "before_after.svg")
        Path(self._results["out_report"]).write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
        return runtime


def run_ddasr(argv: list[str]) -> int:
    """The ``ddasr`` command with :class:`QuickBeforeAfter` as its reportlet."""
    from ddasr_nipype.bids_app import run as app
    from ddasr_nipype.workflows import base

    base._before_after = QuickBeforeAfter
    return app.main(argv)
