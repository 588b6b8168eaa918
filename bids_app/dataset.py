"""Checks and files around the input dataset and the output folder (no nipype)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")
FILTER_QUERIES = ("t1w",)
#: keys of a filter query that pybids' ``BIDSLayout.get`` takes beside the entities
FILTER_OPTIONS = ("scope", "regex_search", "invalid_filters")


class UsageError(ValueError):
    """A command-line argument is invalid; the message says why."""


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def check_output_dir(bids_dir: Path, output_dir: Path, *, what: str = "output directory") -> None:
    """Refuse an output (or work) folder inside the input dataset, unless under ``derivatives/``."""
    bids_dir, output_dir = bids_dir.resolve(), output_dir.resolve()
    if not _is_within(output_dir, bids_dir):
        return
    rel = output_dir.relative_to(bids_dir)
    if not rel.parts or rel.parts[0] != "derivatives":
        raise UsageError(
            f"the {what} {output_dir} is inside the input dataset {bids_dir}; the input dataset is "
            f"never written to: choose a folder outside it or under {bids_dir / 'derivatives'}"
        )


def check_writable(path: Path, *, what: str = "output directory") -> None:
    """Create ``path`` if needed and prove that a file can be written in it, else :class:`UsageError`
    (before any work starts: not after hours of it)."""
    from ddasr_nipype.fileio import probe_writable

    try:
        probe_writable(path)
    except OSError as err:
        raise UsageError(f"the {what} {path} is not writable: {err.strerror or err}") from err


def normalize_labels(labels, *, prefix: str) -> list[str]:
    """Strip an optional ``sub-``/``ses-`` prefix; every label must be alphanumeric (BIDS)."""
    out = []
    for label in labels:
        label = str(label)
        label = label[len(prefix):] if label.startswith(prefix) else label
        if not LABEL_RE.match(label):
            raise UsageError(
                f"invalid label {label!r}: BIDS labels are letters and digits only "
                f"(given with or without '{prefix}')"
            )
        if label not in out:
            out.append(label)
    return out


def dataset_subjects(bids_dir: Path) -> list[str]:
    """Participant labels present in the dataset (``sub-*`` folders)."""
    return sorted(
        p.name[4:] for p in Path(bids_dir).iterdir()
        if p.is_dir() and p.name.startswith("sub-") and LABEL_RE.match(p.name[4:])
    )


def select_participants(bids_dir: Path, labels=None) -> list[str]:
    """The participants to process: all of the dataset's, or the given ones (checked to exist)."""
    available = dataset_subjects(bids_dir)
    if not available:
        raise UsageError(f"no participant (sub-* folder) found in {bids_dir}")
    if not labels:
        return available
    wanted = normalize_labels(labels, prefix="sub-")
    missing = [label for label in wanted if label not in available]
    if missing:
        raise UsageError(
            f"participant(s) not found in {bids_dir}: {', '.join('sub-' + m for m in missing)} "
            f"(available: {', '.join(available)})"
        )
    return wanted


def participants_with_outputs(deriv_dir: Path, participants, *, explicit: bool) -> list[str]:
    """The participants whose reports ``--reports-only`` can write (a ``sub-<label>`` folder).

    Participants named on the command line (``explicit``) must all have one, else
    :class:`UsageError` names those without; otherwise the ones that have one are kept (at least one).
    """
    have = [label for label in participants if (Path(deriv_dir) / f"sub-{label}").is_dir()]
    missing = [label for label in participants if label not in have]
    if missing and (explicit or not have):
        raise UsageError(
            f"--reports-only: no outputs in {deriv_dir} for "
            f"{', '.join('sub-' + m for m in missing)} (run the participant first)"
        )
    return have


def bids_entities() -> dict[str, str]:
    """Entities of pybids' bundled ``bids`` configuration (no dataset indexed): name -> file-name key
    (``{"acquisition": "acq", "run": "run", "suffix": "", ...}``)."""
    from bids.layout.models import Config as BIDSConfig

    entities = BIDSConfig.load("bids").entities
    keys = {name: re.search(r"\]\+(\w+)-\(", entity.pattern or "")  # "[_/\\]+acq-(...)"
            for name, entity in entities.items()}
    return {name: (match.group(1) if match else "") for name, match in sorted(keys.items())}


def check_filter_keys(query: dict[str, Any], *, where: str) -> None:
    """Refuse a filter key that is neither a BIDS entity nor a pybids query option."""
    if str(query.get("invalid_filters", "error")) in ("allow", "drop"):
        return  # pybids was asked to take (or drop) unknown keys
    entities = bids_entities()
    entities.pop("subject")  # refused: --participant-label selects participants
    unknown = sorted(set(query) - set(entities) - set(FILTER_OPTIONS))
    if unknown:
        import difflib

        by_key = {key: name for name, key in entities.items() if key}
        hints = []
        for key in unknown:
            close = [by_key[key]] if key in by_key else difflib.get_close_matches(key, entities, n=1)
            hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
        raise UsageError(
            f"{where}: unknown BIDS entit{'ies' if len(unknown) > 1 else 'y'} {', '.join(hints)}; "
            f"valid keys: {', '.join(entities)} (and {', '.join(FILTER_OPTIONS)})"
        )


def load_bids_filters(path: Path | None) -> dict[str, Any] | None:
    """Read a ``--bids-filter-file`` (fMRIPrep format: ``{"t1w": {"acquisition": "mprage"}}``).

    Every key must be a BIDS entity of pybids (``run``, ``acquisition``, ``session``...) or one of
    :data:`FILTER_OPTIONS`; ``subject`` is refused (use ``--participant-label``).
    """
    if path is None:
        return None
    try:
        filters = json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise UsageError(f"BIDS filter file not found: {path}") from err
    except json.JSONDecodeError as err:
        raise UsageError(f"BIDS filter file {path} is not valid JSON: {err}") from err
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(f"BIDS filter file {path}: expected {{query: {{entity: value}}}}")
    unknown = sorted(set(filters) - set(FILTER_QUERIES))
    if unknown:
        raise UsageError(
            f"BIDS filter file {path}: unknown quer{'ies' if len(unknown) > 1 else 'y'} "
            f"{', '.join(unknown)} (this app reads: {', '.join(FILTER_QUERIES)})"
        )
    for name, query in filters.items():
        if "subject" in query:
            raise UsageError("select participants with --participant-label, not in the filter file")
        check_filter_keys(query, where=f"BIDS filter file {path}, query {name!r}")
    return filters


def validate_bids(bids_dir: Path) -> list[str]:
    """Minimal BIDS validation; returns warnings, raises :class:`UsageError` on fatal problems."""
    from bids_validator import BIDSValidator

    description = Path(bids_dir) / "dataset_description.json"
    if not description.is_file():
        raise UsageError(
            f"{bids_dir} is not a BIDS dataset (no dataset_description.json); "
            "use --skip-bids-validation to run anyway"
        )
    try:
        json.loads(description.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{description} is not valid JSON: {err}") from err
    validator = BIDSValidator()
    warnings = []
    for root, dirs, files in os.walk(bids_dir):
        dirs[:] = [d for d in dirs if d not in ("derivatives", "sourcedata", "code")
                   and not d.startswith(".")]
        for name in files:
            rel = "/" + Path(root, name).relative_to(bids_dir).as_posix()
            if rel.startswith("/sub-") and not validator.is_bids(rel):
                warnings.append(f"not a valid BIDS file name: {rel}")
    return warnings


def write_derivative_description(bids_dir: Path, deriv_dir: Path) -> Path:
    """Write ``dataset_description.json`` (DatasetType derivative, GeneratedBy) atomically."""
    from ddasr_nipype import __version__
    from ddasr_nipype.fileio import write_text_atomic

    deriv_dir.mkdir(parents=True, exist_ok=True)
    description = {
        "Name": "ddasr: DDASR super-resolved T1w images",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "ddasr-nipype",
            "Version": __version__,
            "Description": "DDASR super-resolution of T1w brain MRI (nipype workflows)",
            "CodeURL": "https://pypi.org/project/ddasr-nipype/",
        }],
        "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()},
        "HowToAcknowledge": "Cite DDASR (Cong et al.) and ddasr-nipype; see logs/CITATION.md",
    }
    raw = Path(bids_dir) / "dataset_description.json"
    if raw.is_file():
        try:
            name = json.loads(raw.read_text()).get("Name")
        except json.JSONDecodeError:
            name = None
        if name:
            description["SourceDatasets"] = [{"URL": Path(bids_dir).resolve().as_uri(), "Name": name}]
    # atomic, with a temporary name of this process's own: array tasks write it at the same time
    return write_text_atomic(deriv_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n")


STAGING_OWNER = ".owner.json"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (``/proc``; None when it does not exist): tells a live
    process from a later one that reuses its id."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def claim_staging(staging: Path) -> None:
    """Create this run's staging folder and record which process owns it (host, pid, start time)."""
    import socket

    staging.mkdir(parents=True, exist_ok=True)
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}
    (staging / STAGING_OWNER).write_text(json.dumps(owner))


def remove_stale_staging(staging: Path) -> list[Path]:
    """Remove the staging folders, beside this run's ``staging``, of runs that died on this host
    (``kill -9``, a node crash): their owner process is gone. Folders of live runs (SLURM array tasks
    share the output folder) and of other hosts are left alone. Returns the folders removed."""
    import shutil
    import socket

    removed = []
    host = socket.gethostname()
    for other in sorted(staging.parent.glob("*")) if staging.parent.is_dir() else []:
        if other == staging or not other.is_dir():
            continue
        try:
            owner = json.loads((other / STAGING_OWNER).read_text())
        except (OSError, ValueError):
            continue  # not ours to judge (no owner record)
        if owner.get("host") != host:
            continue
        start = _process_start(int(owner.get("pid", -1)))
        if start is None or start != owner.get("start"):
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    return removed

