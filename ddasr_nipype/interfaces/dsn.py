"""Degradation of an HR volume by a trained down-sampling network (DSN)."""

from __future__ import annotations


from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..forksafe import in_fresh_thread


def degrade_file(in_file, reference_lr, *, model: str, plane: str | None = None,
                 device: str = "auto", batch_size: int = 4, num_threads: int | None = None):
    """Load ``in_file`` (HR) and ``reference_lr`` (a real LR scan of the target site) and degrade
    the HR volume with the bundle's DSN. Returns ``(lr_img, info)``."""
    from ..bundle import load_bundle
    from ..data.io import load_volume
    from ..inference import degrade_image

    if num_threads:
        import torch

        torch.set_num_threads(int(num_threads))
    bundle = load_bundle(model)
    return degrade_image(
        load_volume(in_file), bundle, reference_lr=load_volume(reference_lr), device=device,
        batch_size=batch_size, plane=plane,
    )


class _DSNDegradeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="high-resolution 3D image to degrade")
    reference_lr = File(
        exists=True, mandatory=True,
        desc="a real low-resolution scan of the target site (the DSN's domain input)",
    )
    model = traits.Str(
        mandatory=True, desc="model bundle holding a DSN (dsn.pt): bundled name or directory path"
    )
    plane = traits.Enum(
        "sagittal", "coronal", "axial", desc="slicing plane (default: the bundle's plane)"
    )
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="torch device")
    use_gpu = traits.Bool(
        False, usedefault=True, nohash=True, desc="tell nipype's scheduler this node uses a GPU"
    )
    batch_size = traits.Int(4, usedefault=True, nohash=True, desc="slices per forward pass")
    num_threads = traits.Int(desc="number of CPU threads for torch", nohash=True)


class _DSNDegradeOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the synthetic low-resolution image")
    out_json = File(exists=True, desc="JSON file with the run's metadata")
    metadata = traits.Dict(desc="the same metadata as a dictionary")


class DSNDegrade(SimpleInterface):
    """Synthesize a realistic LR image from an HR one with a trained DSN (training pairs, ablations).

    >>> degrade = DSNDegrade(model="/path/to/bundle", plane="sagittal")
    >>> degrade.inputs.plane
    'sagittal'
    >>> degrade.inputs.in_file = "sub-01_T1w.nii.gz"  # doctest: +SKIP
    >>> degrade.inputs.reference_lr = "sub-IXI603_T1w.nii.gz"  # doctest: +SKIP
    >>> res = degrade.run()  # doctest: +SKIP
    """

    input_spec = _DSNDegradeInputSpec
    output_spec = _DSNDegradeOutputSpec

    @in_fresh_thread  # torch in a fork of a process that ran torch (ddasr_nipype.forksafe)
    def _run_interface(self, runtime):
        from .super_resolve import write_image_and_sidecar

        out_img, info = degrade_file(
            self.inputs.in_file, self.inputs.reference_lr, model=self.inputs.model,
            plane=self.inputs.plane if isdefined(self.inputs.plane) else None,
            device=self.inputs.device, batch_size=self.inputs.batch_size,
            num_threads=self.inputs.num_threads if isdefined(self.inputs.num_threads) else None,
        )
        out_file, out_json = write_image_and_sidecar(out_img, info, self.inputs.in_file, "_dsn", runtime.cwd)
        self._results.update(out_file=out_file, out_json=out_json, metadata=info)
        return runtime
