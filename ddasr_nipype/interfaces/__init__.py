"""Nipype interfaces of ddasr-nipype: thin SimpleInterface wrappers around the plain functions of
the model layer (torch is imported only when a node runs)."""

from .brain_extraction import BrainExtraction
from .conform import Conform, Reorient, Reslice
from .consistency import ConsistencySummary, DataConsistency
from .dsn import DSNDegrade
from .reports import ConsistencyReport, SRSummary, ZoomedCrops
from .super_resolve import GridMetadata, SuperResolve

__all__ = [
    "BrainExtraction",
    "Conform",
    "ConsistencyReport",
    "ConsistencySummary",
    "DataConsistency",
    "DSNDegrade",
    "GridMetadata",
    "Reorient",
    "Reslice",
    "SRSummary",
    "SuperResolve",
    "ZoomedCrops",
]
