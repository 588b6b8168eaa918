"""Fork safety: nipype's MultiProc workers forked after torch ran in the parent must not hang.

GNU OpenMP (torch's CPU thread pool) hangs on a futex in a forked child whose parent had run a
parallel region (``ddasr_nipype.forksafe``). The scenarios run in subprocesses with a timeout, so a
hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _bundles import make_tiny_bundle

from ddasr_nipype.forksafe import call_in_fresh_thread

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``code`` as a script (its own ``__main__``) in a fresh interpreter."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    script = Path(args[0]) / "script.py"
    script.write_text(textwrap.dedent(code))
    try:
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=args[0])
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"hung for {timeout} s (forked after torch ran in the parent?):\n"
                    f"{(err.stdout or b'')[-3000:]!r}\n{(err.stderr or b'')[-3000:]!r}")


PARENT_RAN_TORCH = """
    import torch
    torch.set_num_threads(2)
    a = torch.randn(256, 256)
    (a @ a).sum()  # the parent's OpenMP pool is now started (a notebook that ran torch)
"""


def test_a_fork_after_torch_runs_torch_in_a_fresh_thread(tmp_path):
    """The mechanism: the same torch work hangs in the forked child's main thread and not in a
    fresh thread (the control shows the hang is real on this machine)."""
    result = _run(PARENT_RAN_TORCH + """
    import multiprocessing as mp
    from ddasr_nipype.forksafe import call_in_fresh_thread

    def work():
        torch.set_num_threads(2)
        x = torch.randn(256, 256)
        return float((x @ x).sum())

    def child(fresh):
        call_in_fresh_thread(work) if fresh else work()

    if __name__ == "__main__":
        for fresh in (True, False):
            proc = mp.get_context("fork").Process(target=child, args=(fresh,))
            proc.start()
            proc.join(10)
            hung = proc.is_alive()
            proc.kill()
            print(f"fresh={fresh} hung={hung} exit={proc.exitcode if not hung else None}")
    """, str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "fresh=True hung=False exit=0" in lines, result.stdout
    assert "fresh=False hung=True exit=None" in lines, (
        "control: torch in a forked child's main thread no longer hangs with this torch build; "
        f"the fresh thread may no longer be needed\n{result.stdout}")


@pytest.mark.slow
def test_workflows_run_with_multiproc_after_torch_ran_in_the_parent(tmp_path, lr_file, hr_bids, lr_bids):
    """A user's script: torch first, then init_sr_wf and a training node with nipype's MultiProc and
    its default start method (fork), two torch threads per node. Hung before the fix."""
    bundle = make_tiny_bundle(tmp_path / "tiny")
    result = _run(PARENT_RAN_TORCH + """
    import sys
    from nipype.pipeline import engine as pe
    from ddasr_nipype.interfaces.training import TrainDSN
    from ddasr_nipype.workflows.sr import init_sr_wf

    if __name__ == "__main__":
        work, bundle, t1w, hr, lr = sys.argv[1:6]
        wf = init_sr_wf(model=bundle, skip_brain_extraction=True, omp_nthreads=2, device="cpu")
        wf.inputs.inputnode.t1w = t1w
        wf.base_dir = work
        wf.run(plugin="MultiProc", plugin_args={"n_procs": 2})
        print("sr done")
        train = pe.Workflow(name="train_wf", base_dir=work)
        train.add_nodes([pe.Node(TrainDSN(hr_dir=hr, lr_dir=lr, preset="smoke", iterations_dsn=1,
                                          allow_random_vgg19=True, tensorboard=False, num_threads=2,
                                          device="cpu", hr_participant_label=["trio"]),
                                 name="train_dsn", n_procs=2)])
        train.run(plugin="MultiProc", plugin_args={"n_procs": 2})
        print("train done")
    """, str(tmp_path), str(bundle), str(lr_file), str(hr_bids), str(lr_bids), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stdout.splitlines() if line.endswith(" done")] == ["sr done", "train done"]
    assert list(tmp_path.glob("sr_wf/super_resolve/*_sr.nii.gz"))
    assert list(tmp_path.glob("train_wf/_train_dsn_dsn_*/checkpoints/dsn_last.pt"))


def test_every_torch_interface_runs_in_a_fresh_thread(tmp_path):
    from ddasr_nipype.interfaces import BrainExtraction, DataConsistency, SuperResolve
    from ddasr_nipype.interfaces.dsn import DSNDegrade
    from ddasr_nipype.interfaces.training import SynthesizePairs, TrainDSN, TrainSRN

    for interface in (SuperResolve, BrainExtraction, DataConsistency, DSNDegrade, TrainDSN, SynthesizePairs,
                      TrainSRN):
        assert hasattr(interface._run_interface, "__wrapped__"), interface.__name__
    # errors raised in the fresh thread reach nipype, with their message
    bad = tmp_path / "bad_T1w.nii.gz"
    bad.write_text("not an image")
    with pytest.raises(Exception, match="bad_T1w.nii.gz: not a gzip-compressed file"):
        SuperResolve(in_file=str(bad), model="x").run(cwd=str(tmp_path))


def test_the_app_gives_multiproc_a_forkserver(tmp_path, lr_bids):
    from ddasr_nipype.bids_app.parser import parse_args

    bundle = make_tiny_bundle(tmp_path / "tiny")
    base = [str(lr_bids), str(tmp_path / "out"), "participant", "--model", str(bundle), "--skip-bids-validation"]
    assert parse_args(base).plugin_args["mp_context"] == "forkserver"
    plugin = tmp_path / "plugin.yml"
    plugin.write_text("plugin: MultiProc\nplugin_args: {mp_context: spawn, n_procs: 1}\n")
    assert parse_args([*base, "--use-plugin", str(plugin)]).plugin_args["mp_context"] == "spawn"
    plugin.write_text("plugin: Linear\n")
    assert "mp_context" not in parse_args([*base, "--use-plugin", str(plugin)]).plugin_args


def test_forkserver_workers_start_with_nipype_imported_and_without_torch(tmp_path):
    code = """
    import sys
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    def modules():
        return ["nipype.pipeline.engine" in sys.modules, "ddasr_nipype.interfaces" in sys.modules,
                "torch" in sys.modules]

    if __name__ == "__main__":
        if sys.argv[2] == "preload":
            from multiprocessing import forkserver
            from ddasr_nipype.forksafe import preload_forkserver
            preload_forkserver(start=True)
            assert forkserver._forkserver._forkserver_pid is not None  # started: imports under way
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver")) as pool:
            print(pool.submit(modules).result())
    """
    for mode, expected in (("preload", "[True, True, False]"), ("plain", "[False, False, False]")):
        done = _run(code, str(tmp_path), mode, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == expected, (mode, done.stdout, done.stderr[-2000:])


def test_signals_forward_outside_loops_and_record_inside_them():
    """The nodes' mode: outside a training loop a signal goes to the handler installed before; inside
    one (here in a fresh thread, as the nodes run it) it is recorded for the loop; one recorded but not
    acted on is handed on when the block ends."""
    from ddasr_nipype.training import signals

    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        with signals.stop_on_signals(outside_loops="forward"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert received == [signal.SIGTERM] and signals.stop_requested() is None

            def loop():
                with signals.training_loop():
                    os.kill(os.getpid(), signal.SIGTERM)
                    deadline = time.time() + 5
                    while signals.stop_requested() is None and time.time() < deadline:
                        time.sleep(0.01)
                    return signals.stop_requested()

            assert call_in_fresh_thread(loop) == "SIGTERM"
            assert received == [signal.SIGTERM]  # recorded for the loop, not forwarded yet
        assert received == [signal.SIGTERM, signal.SIGTERM]  # the loop did not act on it: handed on
        assert signal.getsignal(signal.SIGTERM) is not signals._handler
    finally:
        signal.signal(signal.SIGTERM, previous)
