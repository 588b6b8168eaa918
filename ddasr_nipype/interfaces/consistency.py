"""Data consistency of a super-resolved T1w with its input: z-maps (:mod:`ddasr_nipype.consistency`)."""

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

from ..consistency import THRESHOLD
from ..forksafe import in_fresh_thread
from ..inference import OUTPUT_PROJECTIONS


def consistency_files(in_file, sr_file, *, mask_file=None, model: str | None = None, use_dsn: bool = True,
                      threshold: float = THRESHOLD, device: str = "auto", num_threads: int | None = None,
                      projection: str = "none") -> tuple[dict[str, Any], dict[str, Any]]:
    """Load the input, its super-resolved output and an optional mask (either grid) and compute the
    physics z-map and, when ``use_dsn`` and the bundle ``model`` has a DSN, the DSN z-map.

    Returns ``(results, metadata)``: ``results`` maps ``"physics"`` (and ``"dsn"``) to a
    :class:`~ddasr_nipype.consistency.ConsistencyResult`; ``metadata`` holds the noise estimate, each map's
    summary (``"physics"``, ``"dsn"``: ``None`` when not computed; the physics summary's notes say what it
    cannot show when the output was made consistent with the input by ``projection``, the
    super-resolution's output setting) and ``notes`` (why there is no DSN map). A grid mismatch raises
    :class:`~ddasr_nipype.errors.InvalidImageError` naming ``sr_file``.
    """
    from ..consistency import dsn_consistency, estimate_noise, physics_consistency
    from ..data.io import load_volume, to_ras
    from ..errors import InvalidImageError

    lr_img = load_volume(in_file)
    sr_img = load_volume(sr_file)
    mask_img = load_volume(mask_file) if mask_file else None
    import numpy as np

    noise = estimate_noise(np.asarray(to_ras(lr_img)[0].dataobj, dtype=np.float64))
    try:
        results = {"physics": physics_consistency(lr_img, sr_img, mask_img, threshold=threshold, noise=noise)}
    except ValueError as err:
        raise InvalidImageError(sr_file, f"{err} (input: {in_file})") from err
    projected = projection_notes(projection)
    if projected:  # the physics map's own note: its sidecar and report row carry it
        from dataclasses import replace

        physics = results["physics"]
        results["physics"] = replace(physics, summary=replace(physics.summary,
                                                              notes=(*physics.summary.notes, *projected)))
    notes: list[str] = []
    dsn_info: dict[str, Any] | None = None
    if use_dsn and model:
        from ..bundle import load_bundle

        bundle = load_bundle(model)
        if not bundle.has_dsn:
            notes.append(f"model {bundle.name!r} has no down-sampling network (dsn.pt): no DSN consistency map, "
                         "only the physics one")
        else:
            if num_threads:
                import torch

                torch.set_num_threads(int(num_threads))
            results["dsn"] = dsn_consistency(lr_img, sr_img, bundle, mask_img, threshold=threshold, noise=noise,
                                             device=device)
            dsn_info = {"model_name": bundle.name, "dsn_sha256": bundle.manifest["files"]["dsn.pt"]["sha256"],
                        "trained_lr_voxel_size": bundle.preprocessing.get("lr_voxel_size"),
                        "plane": bundle.plane}
    elif not use_dsn:
        notes.append("DSN consistency map not requested")
    else:
        notes.append("no model bundle given: no DSN consistency map, only the physics one")
    metadata = {
        "noise": noise.to_dict(),
        "factors_ras": list(results["physics"].factors),
        "physics": results["physics"].summary.to_dict(),
        "dsn": results["dsn"].summary.to_dict() if "dsn" in results else None,
        "dsn_model": dsn_info,
        "notes": notes,
    }
    return results, metadata


def projection_notes(projection: str) -> tuple[str, ...]:
    """What the physics (area-average) map cannot show of an output made to agree with its input by the
    output setting ``projection`` (:data:`ddasr_nipype.inference.OUTPUT_PROJECTIONS`)."""
    if projection == "area":
        return ("the output was projected onto its input by block means (output setting projection 'area'): "
                "this map is near zero by construction (it shows only what the denoising across slices and the "
                "normalization's clipping changed) and says nothing about the detail within each block; the DSN "
                "map, where there is one, and the zoomed crops do",)
    if projection == "kspace":
        return ("the output's central k-space was replaced by its input's (output setting projection "
                "'kspace'): this map is small by construction and says little about the detail the network "
                "added; the DSN map, where there is one, and the zoomed crops say more",)
    return ()


def projection_of(metadata: dict) -> str:
    """The ``projection`` output setting recorded in SuperResolve's metadata (``none`` when absent)."""
    return str((metadata.get("output") or {}).get("projection", "none"))


class _DataConsistencyInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="the low-resolution T1w that was super-resolved")
    sr_file = File(exists=True, mandatory=True,
                   desc="its super-resolved output (the input's field-of-view-preserving up-sampled grid)")
    mask_file = File(exists=True, desc="brain mask on either grid (default: the input's Otsu head mask); the "
                     "figures are computed inside it")
    model = traits.Str(desc="model bundle (name or path) whose DSN re-degrades the output too, if it has one")
    use_dsn = traits.Bool(True, usedefault=True, desc="also compute the DSN map when the bundle has a DSN")
    threshold = traits.Float(THRESHOLD, usedefault=True, desc="|z| above which a voxel counts as contradicted")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, desc="torch device of the DSN")
    num_threads = traits.Int(desc="number of CPU threads for torch", nohash=True)
    projection = traits.Enum(*OUTPUT_PROJECTIONS, usedefault=True,
                             desc="the super-resolution's projection output setting ('none' first): noted in "
                             "the metadata where it makes the physics map uninformative")


class _DataConsistencyOutputSpec(TraitedSpec):
    out_zmap = File(exists=True, desc="physics z-map on the input grid (input's orientation)")
    out_zmap_sr = File(exists=True, desc="the same on the super-resolved grid (nearest: one value per input voxel)")
    out_dsn_zmap = File(desc="DSN z-map on the input grid (only with a DSN)")
    out_dsn_zmap_sr = File(desc="the same on the super-resolved grid (only with a DSN)")
    metadata = traits.Dict(desc="noise estimate, each map's summary figures, notes")


class DataConsistency(SimpleInterface):
    """Where does the super-resolved image disagree with the scan? Re-degrade it to the input grid (area
    average, and the bundle's DSN when it has one), subtract the input, divide by the input's noise level.

    >>> dc = DataConsistency(model="ixi-t1w-x2")
    >>> dc.inputs.threshold
    3.0
    >>> dc.inputs.in_file = "sub-01_T1w.nii.gz"  # doctest: +SKIP
    >>> dc.inputs.sr_file = "sub-01_desc-ddasr_T1w.nii.gz"  # doctest: +SKIP
    >>> res = dc.run()  # doctest: +SKIP
    >>> res.outputs.metadata["physics"]["fraction_above"]  # doctest: +SKIP
    0.0021
    """

    input_spec = _DataConsistencyInputSpec
    output_spec = _DataConsistencyOutputSpec

    @in_fresh_thread  # torch (the DSN map) in a fork of a process that ran torch (ddasr_nipype.forksafe)
    def _run_interface(self, runtime):
        from ..data.io import save_volume

        results, metadata = consistency_files(
            self.inputs.in_file, self.inputs.sr_file,
            mask_file=self.inputs.mask_file if isdefined(self.inputs.mask_file) else None,
            model=self.inputs.model if isdefined(self.inputs.model) and self.inputs.model else None,
            use_dsn=self.inputs.use_dsn, threshold=self.inputs.threshold, device=self.inputs.device,
            num_threads=self.inputs.num_threads if isdefined(self.inputs.num_threads) else None,
            projection=self.inputs.projection,
        )
        names = {"physics": ("out_zmap", "out_zmap_sr", "_zmap"), "dsn": ("out_dsn_zmap", "out_dsn_zmap_sr", "_dsnzmap")}
        for kind, result in results.items():
            lr_key, sr_key, suffix = names[kind]
            for key, img, grid in ((lr_key, result.zmap_img, ""), (sr_key, result.zmap_sr_img, "_sr")):
                path = fname_presuffix(self.inputs.in_file, suffix=f"{suffix}{grid}.nii.gz", newpath=runtime.cwd,
                                       use_ext=False)
                save_volume(img, path)
                self._results[key] = path
        self._results["metadata"] = metadata
        return runtime


class _ConsistencySummaryInputSpec(BaseInterfaceInputSpec):
    zmap_file = File(exists=True, mandatory=True, desc="physics z-map on the input grid (DataConsistency's out_zmap)")
    dsn_zmap_file = File(exists=True, desc="DSN z-map on the input grid (out_dsn_zmap), when there is one")
    mask_file = File(exists=True, mandatory=True, desc="brain mask on the input grid (any orientation)")
    metadata = traits.Dict(mandatory=True, desc="DataConsistency's metadata")


class _ConsistencySummaryOutputSpec(TraitedSpec):
    metadata = traits.Dict(desc="the metadata, each map's summary computed in mask_file")


class ConsistencySummary(SimpleInterface):
    """The figures of DataConsistency's maps in a brain mask that came later: the same metadata as
    DataConsistency given ``mask_file`` (within float32 rounding of the stored maps). The app computes the
    maps beside the brain extraction, then summarizes them in its mask with this node.

    >>> ConsistencySummary().inputs.mask_file  # doctest: +ELLIPSIS
    <undefined>
    """

    input_spec = _ConsistencySummaryInputSpec
    output_spec = _ConsistencySummaryOutputSpec

    def _run_interface(self, runtime):
        from ..consistency import ZMapSummary, resummarize
        from ..data.io import load_volume

        metadata = dict(self.inputs.metadata)
        mask_img = load_volume(self.inputs.mask_file)
        maps = {"physics": self.inputs.zmap_file,
                "dsn": self.inputs.dsn_zmap_file if isdefined(self.inputs.dsn_zmap_file) else None}
        for kind, path in maps.items():
            if metadata.get(kind) is None:
                continue
            if path is None:
                raise ValueError(f"the metadata has a {kind} summary but no {kind} z-map was given")
            metadata[kind] = resummarize(load_volume(path), mask_img, ZMapSummary.from_dict(metadata[kind])).to_dict()
        self._results["metadata"] = metadata
        return runtime
