"""Torch work that survives ``fork``: nipype's MultiProc workers after torch ran in the parent.

On Linux, torch's CPU thread pool is GNU OpenMP's (libgomp). libgomp keeps the pool in the state of
the thread that started it; a process forked after its parent ran a parallel region inherits that
state but not the pool's threads, and the forking thread's next parallel region waits for them
forever (a futex wait, no error). nipype's MultiProc forks its workers by default, so
``super_resolve_image(...)`` in a notebook, then ``init_sr_wf(...).run(plugin="MultiProc")``, hung in
the first node that ran torch with more than one thread.

Two remedies, both used by this package:

- :func:`call_in_fresh_thread` runs a function in a new thread. A new thread starts a pool of its
  own, so the work runs whatever state the process inherited, and the pool ends with the thread, so
  the calling thread stays safe to fork. Every interface of this package that runs torch
  (``SuperResolve``, ``BrainExtraction``, ``DataConsistency``, ``DSNDegrade``, ``TrainDSN``,
  ``SynthesizePairs``, ``TrainSRN``) runs its work this way, whatever plugin and start method run it.
- :func:`multiproc_plugin_args` gives nipype's MultiProc a ``forkserver`` start method: workers
  start from a clean server process that never ran torch. The ``ddasr`` app uses it; use it for
  workflows that hold nodes of your own running torch (or any OpenMP code), and guard the script
  with ``if __name__ == "__main__":`` (the start method imports the main module, as ``spawn`` does).
"""

from __future__ import annotations

import functools
import signal
import threading
from typing import Any, Callable, TypeVar

__all__ = ["MULTIPROC_START_METHOD", "call_in_fresh_thread", "in_fresh_thread", "multiproc_plugin_args",
           "preload_forkserver"]

T = TypeVar("T")

#: The ``mp_context`` this package gives nipype's MultiProc plugin.
MULTIPROC_START_METHOD = "forkserver"

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def call_in_fresh_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a new thread, wait for it, and return its result or raise its
    exception (with its traceback).

    SIGINT and SIGTERM are blocked in the new thread (and in the threads it starts, torch's pool
    included), so they reach the calling thread, whose handlers run while it waits (it wakes every
    50 ms). A handler that raises there (``KeyboardInterrupt``) leaves the worker thread running
    to its end in the background (a daemon thread: it does not keep the process alive).

    >>> call_in_fresh_thread(lambda a, b=0: threading.current_thread() is threading.main_thread(), 1, b=2)
    False
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            outcome["error"] = err

    worker = threading.Thread(target=target, name=f"ddasr-{getattr(fn, '__name__', 'work')}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.05)
    if "error" in outcome:
        error = outcome.pop("error")
        try:
            raise error
        finally:
            del error
    return outcome["result"]


def in_fresh_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: every call of ``fn`` goes through :func:`call_in_fresh_thread` (e.g. an interface's
    ``_run_interface``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return call_in_fresh_thread(fn, *args, **kwargs)

    return wrapper


def multiproc_plugin_args(**plugin_args: Any) -> dict[str, Any]:
    """``plugin_args`` for ``workflow.run(plugin="MultiProc", ...)`` with a fork-safe start method
    (``mp_context`` :data:`MULTIPROC_START_METHOD` unless given).

    >>> multiproc_plugin_args(n_procs=4)
    {'mp_context': 'forkserver', 'n_procs': 4}
    """
    return {"mp_context": MULTIPROC_START_METHOD, **plugin_args}


#: modules every MultiProc worker of the app imports before its first node (nipype's node machinery and
#: this package's interfaces; no torch): :func:`preload_forkserver`
FORKSERVER_PRELOAD = ("nipype.pipeline.engine", "ddasr_nipype.interfaces")


def preload_forkserver(modules: tuple[str, ...] = FORKSERVER_PRELOAD, *, start: bool = False) -> None:
    """Have the ``forkserver`` process import ``modules`` once, so that every worker forked from it starts
    with them (besides ``__main__``, the server's default). Takes effect for a server started after the
    call (the first MultiProc pool of the process); ``start`` starts it now, its imports running in the
    background while the caller goes on.

    Each worker otherwise imports nipype and the interfaces itself (0.3-0.4 s) before its first node: the
    second worker of a short run starts in the middle of it, when two nodes first run side by side.
    torch is left out: the server would hold the first node back while importing it.
    """
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.set_forkserver_preload(["__main__", *modules])
    if start:
        forkserver.ensure_running()
