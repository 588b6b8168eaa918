"""Super-resolution of a whole T1w volume with a DDASR model bundle (SRN inference)."""

from __future__ import annotations

import json
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
from ..inference import BACKGROUNDS, OUTPUT_PROJECTIONS

PLANES = ("sagittal", "coronal", "axial", "all")
DEVICES = ("auto", "cpu", "cuda")


def write_image_and_sidecar(img, info: dict, in_file: str, suffix: str, cwd: str) -> tuple[str, str]:
    """Write ``img`` and its ``info`` JSON into ``cwd``, named after ``in_file`` plus ``suffix``.

    When ``info`` splits its runtime (``timings_s``), the split also gives the seconds spent writing the
    image (``write``), added to ``info`` itself, so that the node's ``metadata`` equals the JSON."""
    import time

    from ..data.io import save_volume

    out_file = fname_presuffix(in_file, suffix=f"{suffix}.nii.gz", newpath=cwd, use_ext=False)
    out_json = fname_presuffix(in_file, suffix=f"{suffix}.json", newpath=cwd, use_ext=False)
    t0 = time.perf_counter()
    save_volume(img, out_file)
    if "timings_s" in info:
        info["timings_s"] = {**info["timings_s"], "write": round(time.perf_counter() - t0, 3)}
    with open(out_json, "w") as stream:
        json.dump(info, stream, indent=2, sort_keys=True)
    return out_file, out_json


def super_resolve_file(
    in_file,
    *,
    model: str,
    planes: str = "sagittal",
    device: str = "auto",
    batch_size: int | None = None,
    num_threads: int | None = None,
    tile_size: int | None = None,
    strength: float | None = None,
    background: str | None = None,
    out_orientation: str | None = None,
    slice_denoise: float | None = None,
    projection: str | None = None,
):
    """Load and validate ``in_file``, super-resolve it with bundle ``model`` (name or path).

    ``strength``, ``background``, ``slice_denoise`` and ``projection`` default to the bundle's
    recommendation (:func:`ddasr_nipype.inference.output_settings`), ``batch_size`` to the device's
    (:func:`ddasr_nipype.inference.default_batch_size`). ``out_orientation`` (axis codes) reorients the
    output (exact: axes permuted and flipped). Returns ``(out_img, info)``; ``info`` (scale, planes,
    device, runtime and its split, model name and sha256, output settings, input/output shapes, voxel
    sizes and factors along the axes of the output file) is what the JSON sidecar records.
    """
    import time

    from ..bundle import load_bundle
    from ..data.io import header_warnings, load_volume
    from ..inference import LOGGER, super_resolve_image

    t0 = time.perf_counter()
    img = load_volume(in_file)
    bundle = load_bundle(model)
    read_s = time.perf_counter() - t0
    out_img, info = super_resolve_image(
        img, bundle, planes=planes, device=device, batch_size=batch_size,
        num_threads=num_threads, tile_size=tile_size, strength=strength, background=background,
        slice_denoise=slice_denoise, projection=projection,
    )
    info["timings_s"] = {"read": round(read_s, 3), **info.get("timings_s", {})}
    warnings = header_warnings(img)
    for message in warnings:
        LOGGER.warning("%s", message)
    info["warnings"] = [*info.get("warnings", []), *warnings]
    if out_orientation:
        from .conform import conform_image

        t0 = time.perf_counter()
        out_img, _ = conform_image(out_img, orientation=out_orientation)
        # the input in the same orientation (in memory): its grid along the axes of the output file
        img, _ = conform_image(img, orientation=out_orientation)
        info["output_orientation"] = out_orientation.upper()
        info["timings_s"] = {**info["timings_s"], "reorient": round(time.perf_counter() - t0, 3)}
    return out_img, {**info, **grid_info(img, out_img, info["upsampling_factors_ras"])}


def grid_info(in_img, out_img, factors_ras) -> dict:
    """Shapes, voxel sizes and up-sampling factors of an input and its super-resolved output, each
    along the axes of its own file (what ``fslinfo`` or ``img.shape`` show).

    >>> import nibabel as nib, numpy as np
    >>> psr = np.array([[0, 0, -2, 0], [-2, 0, 0, 0], [0, -2, 0, 0], [0, 0, 0, 1.]])
    >>> lr = nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), psr)
    >>> sr = nib.Nifti1Image(np.zeros((8, 10, 6), np.float32), psr @ np.diag([.5, .5, 1, 1]))
    >>> grid_info(lr, sr, [1, 2, 2])["upsampling_factors"]  # sagittal: the R-L axis is the file's third
    [2, 2, 1]
    """
    from nibabel.orientations import io_orientation

    ornt = io_orientation(out_img.affine)
    return {
        "input_shape": [int(n) for n in in_img.shape[:3]],
        "input_voxel_size_mm": [round(float(z), 6) for z in in_img.header.get_zooms()[:3]],
        "output_shape": [int(n) for n in out_img.shape[:3]],
        "output_voxel_size_mm": [round(float(z), 6) for z in out_img.header.get_zooms()[:3]],
        "upsampling_factors": [int(factors_ras[int(ras_axis)]) for ras_axis in ornt[:, 0]],
    }


class _GridMetadataInputSpec(BaseInterfaceInputSpec):
    metadata = traits.Dict(mandatory=True, desc="SuperResolve's metadata (of the RAS-conformed input)")
    source_file = File(exists=True, mandatory=True, desc="the input T1w as given (its own orientation)")
    sr_file = File(exists=True, mandatory=True, desc="the super-resolved T1w in the input's orientation")


class _GridMetadataOutputSpec(TraitedSpec):
    metadata = traits.Dict(desc="the metadata with grids along the axes of the input and output files")


class GridMetadata(SimpleInterface):
    """Re-express SuperResolve's grid metadata along the axes of the files the user gets.

    In :func:`~ddasr_nipype.workflows.sr.init_sr_wf` the network runs on a RAS copy of the input;
    shapes, voxel sizes and up-sampling factors in the sidecar and report must follow the axis order
    of the input and output files instead.

    >>> GridMetadata(metadata={"scale": 2}).inputs.metadata
    {'scale': 2}
    """

    input_spec = _GridMetadataInputSpec
    output_spec = _GridMetadataOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib

        metadata = dict(self.inputs.metadata)
        metadata.update(grid_info(nib.load(self.inputs.source_file), nib.load(self.inputs.sr_file),
                                  metadata["upsampling_factors_ras"]))
        self._results["metadata"] = metadata
        return runtime


class _SuperResolveInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="low-resolution 3D T1w image")
    model = traits.Str(
        mandatory=True, desc="model bundle: a bundled model name or the path of a bundle directory"
    )
    planes = traits.Enum(
        *PLANES, usedefault=True,
        desc="slicing plane of the 2D network (x2 in that plane, as in the paper), or 'all' to fuse "
        "the three planes into an isotropic x2 volume",
    )
    device = traits.Enum(
        *DEVICES, usedefault=True, desc="torch device; 'auto' picks CUDA when available"
    )
    use_gpu = traits.Bool(
        False, usedefault=True, nohash=True,
        desc="tell nipype's MultiProc scheduler that this node occupies a GPU",
    )
    num_threads = traits.Int(desc="number of CPU threads for torch", nohash=True)
    batch_size = traits.Int(
        nohash=True, desc="slices per forward pass (default: 1 on the CPU, where that is fastest; 8 on a GPU)"
    )
    tile_size = traits.Int(
        desc="process slices larger than this (pixels) in overlapping tiles to bound memory",
        nohash=True,
    )
    strength = traits.Range(
        low=0.0, high=1.0,
        desc="weight of the network's output against bicubic interpolation of the input (1: the "
        "network alone); default: the model bundle's recommendation",
    )
    background = traits.Enum(
        *BACKGROUNDS,
        desc="'input': keep the bicubic interpolation of the input in the air around the head; "
        "'model': the network's output everywhere; default: the model bundle's recommendation",
    )
    slice_denoise = traits.Range(
        low=0.0,
        desc="denoise the network's input across neighbouring slices first (non-local means, h = this x the "
        "noise level the model reads; 0: off); default: the model bundle's recommendation",
    )
    projection = traits.Enum(
        *OUTPUT_PROJECTIONS,
        desc="make each output slice agree with its input slice under this model of the down-sampling "
        "('kspace': the output's central k-space becomes the input's; 'area': each block's mean the input "
        "voxel's; 'none': off); default: the model bundle's recommendation",
    )
    out_orientation = traits.Str(
        desc="write the output in this orientation (three axis codes, e.g. the original 'PSR' of an input "
        "conformed to RAS: Conform's in_orientation); exact, axes are only permuted and flipped. Default: "
        "the input's",
    )


class _SuperResolveOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the super-resolved image (float32), FOV-preserving affine")
    out_json = File(exists=True, desc="JSON file with the run's metadata")
    metadata = traits.Dict(desc="the same metadata as a dictionary (for sidecars)")
    model_sha256 = traits.Str(desc="sha256 of the SR generator weights that were used")


class SuperResolve(SimpleInterface):
    """Super-resolve a volume slice by slice with the DDASR super-resolution network.

    Slices stream through the generator in batches (tiles for large slices), so memory stays
    bounded; the output keeps the input's orientation and field of view.

    >>> sr = SuperResolve(model="t1w-x2", planes="all", device="cpu")
    >>> sr.inputs.planes
    'all'
    >>> sr.inputs.in_file = "sub-01_T1w.nii.gz"  # doctest: +SKIP
    >>> res = sr.run()  # doctest: +SKIP
    >>> res.outputs.metadata["scale"]  # doctest: +SKIP
    2
    """

    input_spec = _SuperResolveInputSpec
    output_spec = _SuperResolveOutputSpec

    @in_fresh_thread  # torch in a fork of a process that ran torch (ddasr_nipype.forksafe)
    def _run_interface(self, runtime):
        def _opt(value):
            return value if isdefined(value) and value else None

        out_img, info = super_resolve_file(
            self.inputs.in_file, model=self.inputs.model, planes=self.inputs.planes,
            device=self.inputs.device, batch_size=_opt(self.inputs.batch_size),
            num_threads=_opt(self.inputs.num_threads), tile_size=_opt(self.inputs.tile_size),
            strength=self.inputs.strength if isdefined(self.inputs.strength) else None,
            background=self.inputs.background if isdefined(self.inputs.background) else None,
            slice_denoise=self.inputs.slice_denoise if isdefined(self.inputs.slice_denoise) else None,
            projection=(self.inputs.projection if isdefined(self.inputs.projection)
                              else None),
            out_orientation=_opt(self.inputs.out_orientation),
        )
        out_file, out_json = write_image_and_sidecar(out_img, info, self.inputs.in_file, "_sr", runtime.cwd)
        self._results.update(
            out_file=out_file, out_json=out_json, metadata=info, model_sha256=info["model_sha256"]
        )
        return runtime
