"""Every bad input in one table, through the BIDS App (tiny random-weights bundle, no brain extraction).

One dataset holds one participant per case and the app runs once over it (nipype's Linear plugin, in
this process, so two cases can be simulated: an unreadable file when the tests run as root, and a disk
that fills up while a derivative is written; the before/after SVG reportlet is replaced by a stand-in
that reads the same images, as it takes half a minute a participant here). For every case: a clear message naming the file and the
problem in the participant's crash file and report and no outputs, or, for a valid input, complete
outputs; for all of them together: exit status 1, no half-written file anywhere in the output folder,
and the input dataset byte for byte as it was (symlinks still symlinks).
"""

from __future__ import annotations

import builtins
import errno
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
from _bundles import make_tiny_bundle

pytest.importorskip("torch")

ROOT = os.geteuid() == 0
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
MEM_GB = 0.5  # --mem: the "toolarge" header needs about 1.1 GB, every other case about 1 MB


def _phantom(shape=(32, 32, 16), seed=0) -> np.ndarray:
    """A head-like blob: an ellipsoid of tissue with some structure and noise, in air."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(g ** 2 for g in grid))
    data = np.where(r < 0.8, 600 + 300 * np.cos(6 * grid[0]) * np.sin(4 * grid[1]), 0.0)
    return (data + rng.normal(0, 20, shape)).astype(np.float32)


def _save(path: Path, data, affine=AFFINE, **header) -> Path:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, path)
    return path


def _truncated(path):
    _save(path, _phantom())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_gzip(path):
    path.write_text("subject 01, T1w, see the scanner's PACS\n" * 20)


def _not_nifti(path):
    path.write_bytes(gzip.compress(json.dumps({"not": "an image"}).encode() * 50))


def _nan(path):
    data = _phantom()
    data[3, 4, 5] = np.nan
    _save(path, data)


def _inf(path):
    data = _phantom()
    data[3, 4, 5] = np.inf
    _save(path, data)


def _qform_sform(path):
    img = nib.Nifti1Image(_phantom(), AFFINE)
    img.set_sform(AFFINE, code=2)  # e.g. a registration written to the sform only
    moved = AFFINE.copy()
    moved[:3, 3] += (10.0, 0.0, 0.0)
    img.set_qform(moved, code=1)
    nib.save(img, path)


def _too_large(path):
    """A valid header for 256^3 voxels whose data block is missing: refused from the header alone."""
    img = nib.Nifti1Image(np.zeros((256, 256, 256), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    path.write_bytes(gzip.compress(img.header.binaryblock + b"\0" * 4))


def _int16_slope(path):
    raw = np.round(_phantom() / 0.5 - 20).astype(np.int16)
    img = nib.Nifti1Image(raw, AFFINE)
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, 10.0)  # real values: 0.5 * raw + 10
    nib.save(img, path)


def _symlink(path):
    target = path.parents[3] / "elsewhere" / "scan.nii.gz"  # outside the dataset (git-annex, datalad)
    target.parent.mkdir(exist_ok=True)
    _save(target, _phantom(seed=3))
    path.symlink_to(target)


@dataclass(frozen=True)
class Case:
    label: str
    make: Callable[[Path], None]
    error: str | None  # a phrase of the expected message; None: a valid input, outputs expected
    check: Callable[[dict, Path], None] | None = None


def _check_3d(sidecar: dict, out: Path) -> None:
    assert nib.load(out).ndim == 3


def _check_not_square(sidecar: dict, out: Path) -> None:
    assert sidecar["Warnings"] == ["sagittal voxels of 1 x 6 mm are not square; the model was trained on "
                                   "square voxels"]


def _check_sform_used(sidecar: dict, out: Path) -> None:
    assert len(sidecar["Warnings"]) == 1 and "the sform (code 2) is used" in sidecar["Warnings"][0]
    assert "by up to 10 mm" in sidecar["Warnings"][0]
    from ddasr_nipype.data.slicing import upsampled_affine

    img = nib.load(out)  # placed by the input's sform, and written with one unambiguous affine
    assert np.allclose(img.affine, upsampled_affine(AFFINE, (1, 2, 2)))
    assert np.allclose(img.get_qform(), img.get_sform())


def _check_scaled(sidecar: dict, out: Path) -> None:
    # --strength 0: the output is bicubic interpolation of the input's real values, 0.5 * raw + 10
    raw = np.round(_phantom() / 0.5 - 20)
    got = np.asarray(nib.load(out).dataobj)
    assert abs(got.mean() - (0.5 * raw + 10).mean()) < 0.02 * abs(raw.mean())
    assert got.dtype == np.float32


def _check_negative(sidecar: dict, out: Path) -> None:
    got = np.asarray(nib.load(out).dataobj)
    assert got.min() < -400  # negative intensities kept (not clipped at 0)


def _check_symlink(sidecar: dict, out: Path) -> None:
    assert sidecar["Sources"] == ["bids:raw:sub-symlink/anat/sub-symlink_T1w.nii.gz"]


CASES = [
    Case("truncgz", _truncated, "corrupt or truncated"),
    Case("notgzip", _not_gzip, "not a gzip-compressed file"),
    Case("notnifti", _not_nifti, "not a NIfTI or MGH image"),
    Case("twod", lambda p: _save(p, _phantom()[:, :, 5]), "2D image of shape (32, 32); a 3D volume is required"),
    Case("fourd", lambda p: _save(p, np.stack([_phantom()] * 3, axis=-1)), "4D image of shape (32, 32, 16, 3)"),
    Case("singleton", lambda p: _save(p, _phantom()[..., None]), None, _check_3d),
    Case("nan", _nan, "non-finite voxels (1 NaN, 0 Inf)"),
    Case("inf", _inf, "non-finite voxels (0 NaN, 1 Inf)"),
    Case("zeros", lambda p: _save(p, np.zeros((32, 32, 16), np.float32)), "image is empty: all zeros"),
    Case("constant", lambda p: _save(p, np.full((32, 32, 16), 7, np.float32)),
         "image is empty: constant (every voxel = 7)"),
    Case("aniso", lambda p: _save(p, _phantom((32, 32, 8)), np.diag([1.0, 1.0, 6.0, 1.0])), None, _check_not_square),
    Case("qformsform", _qform_sform, None, _check_sform_used),
    Case("toolarge", _too_large, "too large for the memory limit: super-resolving this 256x256x256 volume"),
    Case("int16slope", _int16_slope, None, _check_scaled),
    Case("negative", lambda p: _save(p, _phantom() - 800), None, _check_negative),
    Case("symlink", _symlink, None, _check_symlink),
    Case("unreadable", lambda p: _save(p, _phantom()), "cannot read the file (Permission denied)"),
    Case("midwrite", lambda p: _save(p, _phantom()), "No space left on device"),
]


def _t1w(bids: Path, label: str) -> Path:
    return bids / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"


def _snapshot(root: Path) -> dict[str, tuple]:
    return {str(p.relative_to(root)): (p.is_symlink(), hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


class _DiskFullWriter:
    """A file that takes half of the first write, then fails as a full disk does."""

    def __init__(self, fobj, path):
        self._fobj, self._path = fobj, path

    def write(self, data):
        self._fobj.write(bytes(data)[: max(1, len(data) // 2)])
        self._fobj.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)

    def __getattr__(self, name):
        return getattr(self._fobj, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fobj.close()


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    from ddasr_nipype.bids_app.run import main

    root = tmp_path_factory.mktemp("bad-inputs")
    bids = root / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "bad inputs", "BIDSVersion": "1.9.0"}))
    for case in CASES:
        path = _t1w(bids, case.label)
        path.parent.mkdir(parents=True)
        case.make(path)
    unreadable = _t1w(bids, "unreadable")
    before = _snapshot(bids)
    bundle = make_tiny_bundle(root / "tiny")
    plugin = root / "linear.yml"
    plugin.write_text("plugin: Linear\n")

    real_open = builtins.open

    def faulty_open(file, mode="r", *args, **kwargs):
        path = os.fspath(file) if isinstance(file, (str, os.PathLike)) else ""
        if ROOT and "r" in mode and path == str(unreadable):  # root reads any file: simulate the refusal
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        if "w" in mode and ".ddasr-staging" in path and path.endswith("sub-midwrite_desc-ddasr_T1w.nii.gz"):
            return _DiskFullWriter(real_open(file, mode, *args, **kwargs), path)
        return real_open(file, mode, *args, **kwargs)

    if not ROOT:
        unreadable.chmod(0)
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "open", faulty_open)
        status = main([str(bids), str(out), "participant", "--model", str(bundle), "--skip-brain-extraction",
                       "-w", str(root / "work"), "--use-plugin", str(plugin), "--mem", f"{MEM_GB}GB",
                       "--strength", "0", "--omp-nthreads", "1"])
    if not ROOT:
        unreadable.chmod(0o644)
    after = _snapshot(bids)
    return {"status": status, "bids": bids, "out": out, "deriv": out / "ddasr", "before": before, "after": after}


def test_the_run_fails_as_a_whole_and_leaves_no_half_written_file(table_run):
    assert table_run["status"] == 1  # some participants failed
    assert table_run["after"] == table_run["before"]  # every input byte for byte, symlinks kept
    out = table_run["out"]
    assert not list(out.glob(".ddasr-staging*"))
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert not leftovers


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_bad_input(case, table_run):
    deriv = table_run["deriv"]
    subject = deriv / f"sub-{case.label}"
    crashes = sorted(subject.glob("log/*/crash-*.txt"))
    report = (deriv / f"sub-{case.label}.html").read_text()
    if case.error is None:
        assert not crashes, crashes and crashes[0].read_text()[-2000:]
        out = subject / "anat" / f"sub-{case.label}_desc-ddasr_T1w.nii.gz"
        assert out.is_file() and out.with_name(out.name.replace(".nii.gz", ".json")).is_file()
        sidecar = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
        if case.check is not None:
            case.check(sidecar, out)
        assert "No errors to report" in report
        return
    assert len(crashes) == 1, [c.name for c in crashes]
    text = crashes[0].read_text()
    named = str(_t1w(table_run["bids"], case.label)) if case.label != "midwrite" else (
        "sub-midwrite_desc-ddasr_T1w.nii.gz")
    assert f"{named}: " in text or f"{named}'" in text, text[-1500:]  # the message names the file...
    assert case.error in text, text[-1500:]  # ... and the problem
    assert case.error in report
    assert not (subject / "anat").exists()  # nothing of this participant was committed


def test_an_output_or_work_folder_that_is_not_writable_is_refused_before_any_work(tmp_path, lr_bids, capsys):
    from ddasr_nipype.bids_app.parser import parse_args

    bundle = make_tiny_bundle(tmp_path / "tiny")
    locked = tmp_path / "locked"
    locked.mkdir()
    if ROOT:  # root writes anywhere a permission forbids: an immutable folder stops it too
        import subprocess

        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("running as root and chattr +i is not available here")
    else:
        locked.chmod(0o555)
    try:
        for args, what, folder in (([str(locked / "out")], "output directory", locked / "out"),
                                   ([str(tmp_path / "out"), "-w", str(locked / "work")], "work directory",
                                    locked / "work")):
            with pytest.raises(SystemExit) as exc:
                parse_args([str(lr_bids), args[0], "participant", "--model", str(bundle), *args[1:]])
            assert exc.value.code == 2
            err = capsys.readouterr().err
            assert f"the {what} {folder} is not writable:" in err, err
    finally:
        if ROOT:
            import subprocess

            subprocess.run(["chattr", "-i", str(locked)], check=True)
        else:
            locked.chmod(0o755)
    assert not any(locked.iterdir())
