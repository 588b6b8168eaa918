"""Shared fixtures: small real data committed under tests/data, and the optional ../shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent
DATA_DIR = TESTS_DIR / "data"
REPO_DIR = TESTS_DIR.parent
SHARED_DIR = REPO_DIR.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def lr_bids() -> Path:
    """BIDS dataset with one real IXI T1w at 2 mm (PSR orientation)."""
    return DATA_DIR / "lr"


@pytest.fixture(scope="session")
def hr_bids() -> Path:
    """BIDS dataset with two real HR crops: sub-trio (1 mm, RAS) and sub-forrest (0.7 mm, LAS)."""
    return DATA_DIR / "hr"


@pytest.fixture(scope="session")
def lr_file(lr_bids) -> Path:
    return lr_bids / "sub-IXI603" / "anat" / "sub-IXI603_T1w.nii.gz"


@pytest.fixture(scope="session")
def hr_files(hr_bids) -> dict[str, Path]:
    return {
        "trio": hr_bids / "sub-trio" / "anat" / "sub-trio_T1w.nii.gz",
        "forrest": hr_bids / "sub-forrest" / "anat" / "sub-forrest_T1w.nii.gz",
    }


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The larger development datasets in ../shared/data; tests using it skip cleanly without it."""
    if not (SHARED_DIR / "lr").is_dir():
        pytest.skip(f"shared development data not found at {SHARED_DIR}")
    return SHARED_DIR
