"""Atomic file writes: a temporary file in the target's own folder, then ``os.replace``.

A crash, a SIGKILL or a concurrent writer (SLURM array tasks writing one ``dataset_description.json``)
never leaves a truncated file under the final name, and each writer has a temporary name of its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "chmod_default", "write_text_atomic"]


def chmod_default(path) -> None:
    """Give a ``mkstemp`` file (0600) the permissions of an ordinary new file (0666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; once the block has written it, it becomes ``path``
    (ordinary permissions, ``os.replace``). On an exception the temporary file is removed.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_output(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text(), [p.name for p in out.parent.iterdir()]
    ('done', ['a.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def probe_writable(path: str | Path) -> Path:
    """Create the folder ``path`` if needed and prove that a file can be written in it (a temporary file,
    removed again); raises :class:`OSError` otherwise. Returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".ddasr-write-test.", dir=path)
    os.close(fd)
    os.unlink(probe)
    return path
