"""SIGTERM and SIGINT during training: one record per process, read by the training loops.

SLURM preemption sends SIGTERM; Ctrl-C sends SIGINT. What a signal does depends on where it lands:

- inside a training loop (:meth:`~ddasr_nipype.training.engine.StageTrainer.run`) it is only recorded;
  the loop finishes its iteration, writes the checkpoint and raises ``TrainingInterrupted``;
- outside the loops, under ``stop_on_signals(outside_loops="raise")`` (``ddasr-train``, for the whole
  run), it raises :class:`StopRequested` at once (preparing data, synthesizing pairs, writing the
  bundle: every cache file and the bundle are written atomically), and it stays recorded: should the
  exception be swallowed (a handler that runs inside a ``__del__`` or under a bare ``except``), the
  next loop iteration or :func:`raise_if_stop_requested` between two steps acts on it; once the
  outcome is known (:func:`settle`) it is only recorded, and :func:`block_signals` at exit keeps it
  from killing the process while Python shuts down;
- outside the loops, under ``outside_loops="forward"`` (the training nodes, a trainer run from your
  own code), it goes to the handler that was installed before (by default: the process ends).

Handlers are installed by the main thread only (Python runs them there); a training loop running in
another thread (the nipype interfaces run their work in a fresh thread, :mod:`ddasr_nipype.forksafe`)
reads the same record. This module imports nothing heavy, so ``ddasr-train`` installs its handlers
before it imports torch.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["SIGNALS", "StopRequested", "block_signals", "mark_acted_on", "raise_if_stop_requested",
           "settle", "stop_on_signals", "stop_requested", "training_loop"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(BaseException):
    """SIGTERM/SIGINT outside a training loop (a ``BaseException``: ``except Exception`` lets it pass)."""

    def __init__(self, signal_name: str):
        self.signal_name = signal_name
        super().__init__(signal_name)


class _State:
    """The process's record: the first signal received, and who handles the next ones."""

    def __init__(self) -> None:
        self.lock = threading.RLock()  # reentrant: the handler may run while this thread holds it
        self.requested: str | None = None  # name of the first signal received
        self.acted_on = False  # a loop stopped for it, or StopRequested was raised for it
        self.depth = 0  # nesting of stop_on_signals in the main thread (handlers installed when > 0)
        self.outside_loops = "forward"
        self.previous: dict[int, object] = {}  # handlers installed before ours
        self.loops = 0  # training loops running (in any thread)


_STATE = _State()


def _handler(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    with _STATE.lock:
        in_loop = _STATE.loops > 0
        first = _STATE.requested is None
        if in_loop or _STATE.outside_loops == "raise":
            _STATE.requested = _STATE.requested or name
    if in_loop:
        return
    if _STATE.outside_loops == "record":  # settle(): the outcome is known
        _STATE.requested = _STATE.requested or name
        return
    if _STATE.outside_loops == "raise":
        if first:  # later signals are only recorded: the run is already stopping
            _STATE.acted_on = True
            raise StopRequested(name)
        return
    previous = _STATE.previous.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # SIG_DFL, or a handler not installed from Python
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


@contextlib.contextmanager
def stop_on_signals(*, outside_loops: str = "forward") -> Iterator[None]:
    """Handle SIGTERM and SIGINT for the duration of the block (see the module docstring).

    ``outside_loops`` is ``"raise"`` (:class:`StopRequested`) or ``"forward"`` (the previous handler).
    Nested blocks keep the outermost one's handlers and mode; outside the main thread this does
    nothing. The record is cleared when the outermost block starts and kept after it ends
    (:func:`stop_requested`). In ``forward`` mode, a signal that a loop recorded but did not act on
    (it came after the loop's last check) is handed to the previous handler when the block ends.
    """
    if outside_loops not in ("raise", "forward"):
        raise ValueError(f"outside_loops must be 'raise' or 'forward', got {outside_loops!r}")
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _STATE.depth:
        _STATE.depth += 1
        try:
            yield
        finally:
            _STATE.depth -= 1
        return
    with _STATE.lock:
        _STATE.requested = None
        _STATE.acted_on = False
        _STATE.outside_loops = outside_loops
    _STATE.previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    _STATE.depth = 1
    try:
        yield
    finally:
        _STATE.depth = 0
        for s, previous in _STATE.previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
    if outside_loops == "forward" and _STATE.requested and not _STATE.acted_on:
        _STATE.acted_on = True
        signal.raise_signal(signal.Signals[_STATE.requested])


@contextlib.contextmanager
def training_loop() -> Iterator[None]:
    """Mark a training loop as running: signals are only recorded meanwhile (the loop reads
    :func:`stop_requested` after every iteration). Installs the handlers (``forward``) when no
    block has."""
    with stop_on_signals(outside_loops="forward"):
        with _STATE.lock:
            _STATE.loops += 1
        try:
            yield
        finally:
            with _STATE.lock:
                _STATE.loops -= 1


def settle() -> None:
    """The outcome of the run is known: until the outermost :func:`stop_on_signals` block ends, a
    signal is only recorded (the messages that report the outcome are not cut short)."""
    with _STATE.lock:
        _STATE.outside_loops = "record"


def mark_acted_on() -> None:
    """Record that the signal of :func:`stop_requested` was acted on (a loop checkpointed and stopped)."""
    _STATE.acted_on = True


def stop_requested() -> str | None:
    """The name of the signal received since the outermost :func:`stop_on_signals` began, or None."""
    return _STATE.requested


def raise_if_stop_requested() -> None:
    """Between two steps: raise :class:`StopRequested` if a signal was received and not acted on."""
    name = _STATE.requested
    if name is not None:
        _STATE.acted_on = True
        raise StopRequested(name)


def block_signals() -> None:
    """Block SIGTERM and SIGINT in this thread for good. ``ddasr-train`` registers it with ``atexit``
    once its outcome is known: Python resets its handlers to the default (terminate) while it shuts
    down, which takes seconds after torch ran, and a late signal then killed the process with 143; a
    blocked one stays pending and the process exits with its outcome's status. (Registered with
    ``atexit``, not called at once: a blocked mask is inherited by child processes, and an in-process
    caller such as click's test runner goes on to start some.)"""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(SIGNALS))
