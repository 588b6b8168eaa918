"""BIDS-Derivatives output: the data sink, sidecar metadata and the all-or-nothing commit step.

Every derivative of a subject is first written by ``DerivativesDataSink``
(:mod:`ddasr_nipype.interfaces.datasink`, also importable from here) into a staging
folder inside the output directory; once *all* of them exist, :class:`CommitDerivatives` moves them
to their final place with ``os.replace`` (atomic on one filesystem). A subject that fails half-way
therefore leaves no partial outputs, only its crash files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
OUT_PATH_BASE = "ddasr"
"""Name of the derivatives folder inside the output directory (``<output_dir>/ddasr``)."""

#: names of :mod:`ddasr_nipype.interfaces.datasink`, which imports niworkflows' data sink: that import
#: indexes the TemplateFlow folder (seconds of CPU), which the nodes of this module, run in nipype's
#: worker processes, do not need
_DATASINK_NAMES = ("ANAT_PATTERNS", "DerivativesDataSink", "derivative_path")

#: ``desc`` labels of the consistency z-maps (``_statmap``): physics re-degradation, and the DSN's
CONSISTENCY_DESC = {"physics": "consistency", "dsn": "consistencyDSN"}
#: ``res`` label of the copies of the z-maps on the super-resolved grid (the maps themselves are on the
#: input's grid, which keeps no ``res`` entity, as the raw scan has none)
SR_RESOLUTION = "sr"


def __getattr__(name: str):
    if name in _DATASINK_NAMES:
        from . import datasink

        return getattr(datasink, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bids_uri(path: str | Path, bids_dir: str | Path, dataset: str = "raw") -> str:
    """``bids:<dataset>:<relative path>`` (BIDS 1.8 URI) of a file of the input dataset."""
    rel = os.path.relpath(Path(path).absolute(), Path(bids_dir).absolute())
    if rel.startswith(".."):
        return str(Path(path).absolute())
    return f"bids:{dataset}:{Path(rel).as_posix()}"


def t1w_sidecar(metadata: dict[str, Any], source_file: str, bids_dir: str) -> dict[str, Any]:
    """JSON sidecar of a super-resolved T1w from SuperResolve's metadata."""
    return {
        "Description": "T1w image super-resolved with DDASR (domain-distance adapted SR)",
        "Sources": [bids_uri(source_file, bids_dir)],
        "VoxelSize": metadata["output_voxel_size_mm"],
        "InputVoxelSize": metadata["input_voxel_size_mm"],
        "Scale": metadata["scale"],
        "Planes": metadata["planes"],
        "UpsamplingFactors": metadata.get("upsampling_factors", metadata.get("upsampling_factors_ras")),
        "ModelName": metadata["model_name"],
        "ModelSHA256": metadata["model_sha256"],
        **({"ModelStrength": metadata["output"]["strength"],
            "Background": metadata["output"]["background"],
            "SliceDenoise": metadata["output"].get("slice_denoise", 0.0),
            "Projection": metadata["output"].get("projection", "none")} if "output" in metadata else {}),
        "Device": metadata["device"],
        "RuntimeSeconds": metadata["runtime_s"],
        "SkullStripped": False,
        **({"Warnings": list(metadata["warnings"])} if metadata.get("warnings") else {}),
    }


def zmap_sidecar(metadata: dict[str, Any], source_file: str, bids_dir: str, *, sr_name: str,
                 method: str = "physics", grid: str = "input") -> dict[str, Any]:
    """JSON sidecar of a consistency z-map from DataConsistency's metadata: what it is, the noise level,
    and the summary figures (RMS z, fraction above the threshold, largest cluster in world mm).
    ``sr_name``: the super-resolved T1w's path in the derivatives (``derivative_path``; the workflow
    knows it, so this node need not import the data sink)."""
    summary = metadata[method]
    noise = metadata["noise"]
    if method == "dsn":
        dsn = metadata.get("dsn_model") or {}
        how = (f"degraded by the down-sampling network (DSN) of model {dsn.get('model_name')!r} (sha256 "
               f"{dsn.get('dsn_sha256')}), then averaged over any other up-sampled axis")
    else:
        how = f"averaged over the output voxels each input voxel covers ({summary['redegradation']} model)"
    cluster = summary.get("largest_cluster")
    out = {
        "Description": "Data-consistency z-map: the super-resolved T1w re-degraded to the input grid, minus "
                       "the input, divided by the input's noise level. |z| > Threshold: the output "
                       "contradicts the acquired data there; z > 0: the output is brighter than the data allow",
        "Sources": [bids_uri(source_file, bids_dir), f"bids::{sr_name}"],
        "Statistic": "z",
        "ReDegradation": how,
        "NoiseSigma": round(float(noise["sigma"]), 6),
        "NoiseEstimator": noise["method"],
        "Mask": summary["mask"],
        "MaskVoxels": summary["mask_voxels"],
        "Threshold": summary["threshold"],
        "RMSZ": summary["rms_z"],
        "MedianZ": summary["median_z"],
        "FractionAboveThreshold": summary["fraction_above"],
        "NumberOfClusters": summary["n_clusters"],
        "LargestCluster": None if cluster is None else {
            "Voxels": cluster["voxels"], "VolumeMm3": cluster["volume_mm3"], "PeakZ": cluster["peak_z"],
            "PeakMm": cluster["peak_mm"], "CentreOfMassMm": cluster["centre_mm"],
            "CoordinateSystem": "the input's world (scanner) coordinates, mm",
        },
        **({"Notes": list(summary["notes"])} if summary.get("notes") else {}),
    }
    if grid == "sr":
        out["Resolution"] = {SR_RESOLUTION: f"the grid of {Path(sr_name).name}: every voxel takes the value of "
                                            "the input voxel that contains it"}
    return out


def mask_sidecar(mask_info: dict[str, Any], source_file: str, bids_dir: str) -> dict[str, Any]:
    """JSON sidecar of the brain mask (resliced onto the super-resolved grid)."""
    method = {"deepbet": "deepbet (Fisch et al., 2024)", "mask": "user-supplied mask"}
    return {
        "Type": "Brain",
        "Sources": [bids_uri(source_file, bids_dir)],
        "Method": method.get(mask_info.get("backend"), mask_info.get("backend")),
        "Resampling": "computed on the input grid, resliced linearly onto the super-resolved "
                      "grid and thresholded at 0.5",
        "VolumeMl": mask_info.get("mask_volume_ml"),
    }


class _SidecarInputSpec(BaseInterfaceInputSpec):
    kind = traits.Enum("t1w", "mask", "zmap", mandatory=True, desc="which derivative the sidecar is for")
    info = traits.Dict(mandatory=True, desc="metadata from SuperResolve, BrainExtraction or DataConsistency")
    method = traits.Enum("physics", "dsn", usedefault=True, desc="zmap: which re-degradation")
    grid = traits.Enum("input", "sr", usedefault=True, desc="zmap: on the input grid or the super-resolved one")
    source_file = File(exists=False, mandatory=True, desc="the raw T1w from the BIDS dataset")
    sr_name = traits.Str(desc="zmap: the super-resolved T1w's path in the derivatives (one of its sources)")
    bids_dir = Directory(exists=False, mandatory=True, desc="root of the input BIDS dataset")
    in_file = File(exists=True, desc="the derivative itself: its voxel size is recorded")


class _SidecarOutputSpec(TraitedSpec):
    metadata = traits.Dict(desc="sidecar content for DerivativesDataSink's meta_dict")


class SidecarMetadata(SimpleInterface):
    """Turn a node's run information into a BIDS JSON sidecar dictionary.

    >>> SidecarMetadata(kind="mask").inputs.kind
    'mask'
    """

    input_spec = _SidecarInputSpec
    output_spec = _SidecarOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nib

        if self.inputs.kind == "zmap":
            if not isdefined(self.inputs.sr_name):
                raise ValueError("SidecarMetadata(kind='zmap') needs sr_name")
            metadata = zmap_sidecar(self.inputs.info, self.inputs.source_file, self.inputs.bids_dir,
                                    sr_name=self.inputs.sr_name, method=self.inputs.method,
                                    grid=self.inputs.grid)
        else:
            build = t1w_sidecar if self.inputs.kind == "t1w" else mask_sidecar
            metadata = build(self.inputs.info, self.inputs.source_file, self.inputs.bids_dir)
        if isdefined(self.inputs.in_file):  # zooms in the written file's own axis order
            zooms = nib.load(self.inputs.in_file).header.get_zooms()[:3]
            metadata["VoxelSize"] = [round(float(z), 6) for z in zooms]
        if self.inputs.kind == "t1w" and os.path.isfile(self.inputs.source_file):
            zooms = nib.load(self.inputs.source_file).header.get_zooms()[:3]
            metadata["InputVoxelSize"] = [round(float(z), 6) for z in zooms]
        self._results["metadata"] = metadata
        return runtime


def commit_files(in_files: list[str], staging_dir: str | Path, output_dir: str | Path) -> list[str]:
    """Move staged files to the same relative path under ``output_dir`` (``os.replace``)."""
    staging_dir, output_dir = Path(staging_dir).absolute(), Path(output_dir).absolute()
    moves = []
    for in_file in in_files:
        rel = Path(in_file).absolute().relative_to(staging_dir)
        moves.append((Path(in_file), output_dir / rel))
    seen: set[Path] = set()
    for src, dest in moves:
        if dest in seen:
            raise ValueError(f"two derivatives of one participant were staged as {src}: their inputs "
                             "map to the same output name; nothing was committed")
        seen.add(dest)
        if not src.is_file():
            raise FileNotFoundError(f"staged derivative {src} is missing; nothing was committed")
    out_files = []
    for src, dest in moves:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        out_files.append(str(dest))
    return out_files


class _CommitInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(
        traits.Str, mandatory=True, desc="staged derivative files (every output of one subject)"
    )
    staging_dir = Directory(mandatory=True, desc="root of the staging folder")
    output_dir = Directory(mandatory=True, desc="final output directory (same filesystem)")


class _CommitOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="committed files")


class CommitDerivatives(SimpleInterface):
    """Move a subject's staged derivatives into the output directory once all of them exist.

    >>> CommitDerivatives(staging_dir="/out/.staging", output_dir="/out").inputs.output_dir
    '/out'
    """

    input_spec = _CommitInputSpec
    output_spec = _CommitOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        in_files = [f for f in self.inputs.in_files if f and isdefined(f)]
        self._results["out_files"] = commit_files(
            in_files, self.inputs.staging_dir, self.inputs.output_dir
        )
        return runtime
