"""Brain extraction: deepbet (offline, ships its weights) or a user-supplied mask."""

from __future__ import annotations

from typing import Any

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from nipype.utils.filemanip import fname_presuffix

from ..forksafe import in_fresh_thread

BACKENDS = ("deepbet", "mask")
"""Available backends. ``ants`` (niworkflows' antsBrainExtraction) would need the ANTs binaries and
a TemplateFlow template on disk; add it to :func:`extract_brain` when those exist."""


def _deepbet_mask(img, *, threshold: float, n_dilate: int, use_gpu: bool):
    import numpy as np
    from deepbet import BrainExtraction as DeepBet

    try:
        _, mask_img, _ = DeepBet(no_gpu=not use_gpu).run(
            img, threshold=threshold, n_dilate=n_dilate
        )
    except AssertionError as err:  # deepbet signals "no foreground" with an assert
        raise RuntimeError(f"deepbet brain extraction failed: {err}") from err
    return np.asarray(mask_img.dataobj).astype(bool)


def _user_mask(img, mask_img):
    import numpy as np

    from .conform import reslice_image

    same_grid = tuple(mask_img.shape[:3]) == tuple(img.shape[:3]) and np.allclose(
        mask_img.affine, img.affine, atol=1e-3
    )
    if same_grid:
        return np.asarray(mask_img.dataobj) > 0
    return np.asarray(reslice_image(mask_img, img, interpolation="nearest").dataobj) > 0


def extract_brain(
    img,
    *,
    backend: str = "deepbet",
    mask_img=None,
    threshold: float = 0.5,
    n_dilate: int = 0,
    use_gpu: bool = False,
):
    """Compute a brain mask of ``img``; return ``(brain_img, mask_img, info)``.

    ``backend="deepbet"`` runs the deepbet CNN (weights ship with the package; no download);
    ``backend="mask"`` takes ``mask_img`` (any grid: resampled by nearest neighbour onto ``img``'s).
    The mask is ``uint8`` on ``img``'s grid; the brain image is ``img`` with zeros outside the mask.
    """
    import numpy as np

    from ..data.io import new_image_like

    if backend not in BACKENDS:
        raise ValueError(
            f"unknown brain-extraction backend {backend!r}; available: {', '.join(BACKENDS)}"
        )
    if backend == "mask":
        if mask_img is None:
            raise ValueError("backend 'mask' needs a mask image (mask_file)")
        mask = _user_mask(img, mask_img)
    else:
        mask = _deepbet_mask(img, threshold=threshold, n_dilate=n_dilate, use_gpu=use_gpu)
    if not mask.any():
        raise RuntimeError(f"brain extraction ({backend}) returned an empty mask")
    data = np.asarray(img.dataobj, dtype=np.float32)
    brain = new_image_like(np.where(mask, data, 0).astype(np.float32), img.affine, img)
    mask_out = new_image_like(mask.astype(np.uint8), img.affine, img)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    info: dict[str, Any] = {
        "backend": backend,
        "mask_voxels": int(mask.sum()),
        "mask_volume_ml": round(float(mask.sum()) * voxel_ml, 2),
    }
    if backend == "deepbet":
        info.update(threshold=threshold, n_dilate=n_dilate)
    return brain, mask_out, info


class _BrainExtractionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="input T1w image")
    backend = traits.Enum(*BACKENDS, usedefault=True, desc="brain-extraction method")
    mask_file = File(exists=True, desc="user-supplied brain mask (backend 'mask')")
    threshold = traits.Range(
        0.0, 1.0, 0.5, usedefault=True, desc="deepbet probability threshold"
    )
    n_dilate = traits.Int(
        0, usedefault=True, desc="deepbet: dilate (>0) or erode (<0) the mask by this many voxels"
    )
    use_gpu = traits.Bool(False, usedefault=True, nohash=True, desc="run deepbet on the GPU")
    num_threads = traits.Int(desc="number of CPU threads for torch", nohash=True)


class _BrainExtractionOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the skull-stripped image")
    out_mask = File(exists=True, desc="the brain mask (uint8) on the input grid")
    info = traits.Dict(desc="backend, mask size")


class BrainExtraction(SimpleInterface):
    """Extract the brain of a T1w image with deepbet (offline) or from a given mask.

    >>> bet = BrainExtraction(backend="mask")
    >>> bet.inputs.backend
    'mask'
    >>> bet.inputs.in_file = "sub-01_T1w.nii.gz"  # doctest: +SKIP
    >>> bet.inputs.mask_file = "sub-01_desc-brain_mask.nii.gz"  # doctest: +SKIP
    >>> res = bet.run()  # doctest: +SKIP
    """

    input_spec = _BrainExtractionInputSpec
    output_spec = _BrainExtractionOutputSpec

    @in_fresh_thread  # torch in a fork of a process that ran torch (ddasr_nipype.forksafe)
    def _run_interface(self, runtime):
        import nibabel as nib

        from ..data.io import load_volume, save_volume

        if self.inputs.backend == "mask" and not isdefined(self.inputs.mask_file):
            raise ValueError("BrainExtraction: backend 'mask' needs mask_file")
        if isdefined(self.inputs.num_threads) and self.inputs.num_threads > 0:
            import torch

            torch.set_num_threads(self.inputs.num_threads)
        img = load_volume(self.inputs.in_file)
        mask_img = nib.load(self.inputs.mask_file) if isdefined(self.inputs.mask_file) else None
        brain, mask, info = extract_brain(
            img, backend=self.inputs.backend, mask_img=mask_img, threshold=self.inputs.threshold,
            n_dilate=self.inputs.n_dilate, use_gpu=self.inputs.use_gpu,
        )
        out_file = fname_presuffix(
            self.inputs.in_file, suffix="_brain.nii.gz", newpath=runtime.cwd, use_ext=False
        )
        out_mask = fname_presuffix(
            self.inputs.in_file, suffix="_mask.nii.gz", newpath=runtime.cwd, use_ext=False
        )
        save_volume(brain, out_file)
        save_volume(mask, out_mask)
        self._results.update(out_file=out_file, out_mask=out_mask, info=info)
        return runtime
