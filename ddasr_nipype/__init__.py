"""DDASR super-resolution of T1-weighted brain MRI, packaged as nipype nodes and a BIDS App.

Domain-distance adapted super-resolution (DDASR; Cong et al.) in two stages: a transformer
down-sampling network (DSN) that learns a site's real degradation from unpaired HR/LR scans,
and a GAN super-resolution network (SRN) trained on the pairs the DSN synthesizes.
"""

__version__ = "0.1.0"
__packagename__ = "ddasr_nipype"

__all__ = ["__version__", "__packagename__"]
