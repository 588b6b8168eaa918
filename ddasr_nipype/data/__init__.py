"""Volume and slice data layer: loading and validation, RAS reorientation, intensity
normalization, slicing along planes, FOV-preserving grids and training patches.

Plain numpy/nibabel/scipy (torch tensors accepted where noted); no nipype import.
"""

from ddasr_nipype.data import io, normalize, patches, slicing  # noqa: F401

__all__ = ["io", "normalize", "patches", "slicing"]
