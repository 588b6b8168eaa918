"""The run configuration of the ``ddasr`` BIDS App: one frozen dataclass, built once by the parser."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ddasr_nipype
from ddasr_nipype.bundle import DEFAULT_MODEL

EXAMPLE_DIR = Path(ddasr_nipype.__file__).resolve().parent / "resources" / "example"
"""The small example BIDS dataset shipped with the package (one IXI T1w, CC BY-SA 3.0)."""

@dataclass(frozen=True)
class Config:
    """Everything a run needs; passed explicitly (no global mutable state)."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    work_dir: Path | None = None
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] | None = None
    bids_filters: dict[str, Any] | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    stop_on_first_crash: bool = False
    skip_bids_validation: bool = False
    reports_only: bool = False
    verbose: int = 0
    model: str = DEFAULT_MODEL
    device: str = "auto"
    planes: str = "sagittal"
    skip_brain_extraction: bool = False
    quality_metrics: bool = False
    batch_size: int | None = None
    tile_size: int | None = None
    strength: float | None = None
    background: str | None = None
    slice_denoise: float | None = None
    projection: str | None = None
    consistency: bool = True
    run_uuid: str = ""

    @property
    def derivatives_dir(self) -> Path:
        from ddasr_nipype.interfaces.bids import OUT_PATH_BASE

        return Path(self.output_dir) / OUT_PATH_BASE

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
