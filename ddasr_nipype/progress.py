"""Progress of long work: a tqdm bar in a terminal, nothing extra elsewhere.

``ddasr-train`` and ``ddasr-eval`` log plain lines (iteration, rate, time left) that read well in a
SLURM log or a CI transcript. In an interactive terminal they also show a progress bar; a bar's
carriage returns would only clutter a log file, so it is drawn only when the stream is a terminal.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["is_terminal", "progress_bar", "log_above_progress_bars"]


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (a closed or unusual stream is not)."""
    isatty = getattr(stream, "isatty", None)
    if isatty is None:
        return False
    try:
        return bool(isatty())
    except (ValueError, OSError):  # closed, or a file object without a terminal behind it
        return False


def progress_bar(total: int, *, desc: str = "", unit: str = "it", initial: int = 0, stream=None,
                 enabled: bool | None = None, **kwargs: Any):
    """A tqdm bar of ``total`` steps on ``stream`` (default ``sys.stderr``), or ``None``.

    ``enabled=None`` draws it only when ``stream`` is a terminal (:func:`is_terminal`); callers keep
    their plain log lines when they get ``None``. The bar shows the steps done, the rate and the time
    left; ``kwargs`` go to :class:`tqdm.tqdm`.
    """
    stream = sys.stderr if stream is None else stream
    if not (is_terminal(stream) if enabled is None else enabled):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True,
                **kwargs)


def log_above_progress_bars(logger, stream=None):
    """A context in which ``logger``'s console handlers write above the progress bars instead of through
    them, when ``stream`` (default ``sys.stderr``) is a terminal; elsewhere it changes nothing."""
    import contextlib

    if not is_terminal(sys.stderr if stream is None else stream):
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm(loggers=[logger])
