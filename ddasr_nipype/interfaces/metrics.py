"""Image quality metrics of a volume (NIQE, BRISQUE; PSNR/SSIM against a reference) as a nipype node."""

from __future__ import annotations

import json
import math

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

PLANES = ("sagittal", "coronal", "axial")
NO_REFERENCE_METRICS = ("niqe", "brisque", "niqe_head", "brisque_head")  # ddasr_nipype.metrics.volume


class _QualityMetricsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="3D image to assess (e.g. a super-resolved T1w)")
    reference_file = File(
        exists=True,
        desc="ground truth on the same grid as in_file: adds PSNR and SSIM (whole slice, in the mask, 3D)",
    )
    mask_file = File(
        exists=True,
        desc="brain mask on the same grid; without it the Otsu foreground of the reference (else of "
        "in_file) is used",
    )
    plane = traits.Enum(*PLANES, usedefault=True, desc="plane of the 2D slices the metrics are computed on")
    metrics = traits.List(
        traits.Enum(*NO_REFERENCE_METRICS), value=["niqe", "brisque"], usedefault=True,
        desc="no-reference metrics to compute (an empty list skips them); the _head variants score each "
        "slice cropped to the bounding box of the mask",
    )
    min_brain_fraction = traits.Range(
        low=0.0, high=1.0, value=0.1, usedefault=True,
        desc="slices whose mask covers less than this fraction of the slice area are skipped",
    )
    niqe_block_size = traits.Int(96, usedefault=True, desc="NIQE block size (96 in the MATLAB original)")


class _QualityMetricsOutputSpec(TraitedSpec):
    out_metrics = File(exists=True, desc="JSON file with the metrics (mean and std over slices, 3D values)")
    metrics = traits.Dict(desc="the same metrics as a dictionary")


class QualityMetrics(SimpleInterface):
    """Slice-wise NIQE/BRISQUE of an image, and PSNR/SSIM against a reference when one is given.

    Protocol (intensity normalization, slice selection): :mod:`ddasr_nipype.metrics.volume`.

    >>> node = QualityMetrics(plane="sagittal", metrics=["niqe"])
    >>> node.inputs.min_brain_fraction
    0.1
    """

    input_spec = _QualityMetricsInputSpec
    output_spec = _QualityMetricsOutputSpec

    def _run_interface(self, runtime):
        from ..evaluation import quality_metrics_file

        result = quality_metrics_file(
            self.inputs.in_file,
            reference_file=self.inputs.reference_file if isdefined(self.inputs.reference_file) else None,
            mask_file=self.inputs.mask_file if isdefined(self.inputs.mask_file) else None,
            plane=self.inputs.plane,
            no_reference_metrics=tuple(self.inputs.metrics),
            min_brain_fraction=self.inputs.min_brain_fraction,
            niqe_block_size=self.inputs.niqe_block_size,
        )
        # JSON has no NaN/inf: write them as null / strings, keep floats in the dict output
        serializable = {
            k: (None if isinstance(v, float) and math.isnan(v) else
                str(v) if isinstance(v, float) and math.isinf(v) else v)
            for k, v in result.items()
        }
        out_file = fname_presuffix(self.inputs.in_file, suffix="_metrics.json", newpath=runtime.cwd,
                                   use_ext=False)
        with open(out_file, "w") as handle:
            json.dump(serializable, handle, indent=2)
        self._results["out_metrics"] = out_file
        self._results["metrics"] = result
        return runtime
