"""Nipype workflows of ddasr-nipype (installed as ``ddasr_nipype.workflows``)."""

from .base import init_ddasr_wf, init_single_subject_wf
from .sr import init_sr_wf

__all__ = ["init_ddasr_wf", "init_single_subject_wf", "init_sr_wf"]
