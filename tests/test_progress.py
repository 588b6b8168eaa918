"""Progress of long work: a bar in a terminal, plain log lines in a log file (SLURM, CI)."""

from __future__ import annotations

import io
import logging

from ddasr_nipype.progress import is_terminal, log_above_progress_bars, progress_bar
from ddasr_nipype.training.logging import TrainingLogger


class Terminal(io.StringIO):
    """A stream that says it is an interactive terminal."""

    def isatty(self) -> bool:
        super().isatty()  # a closed stream raises ValueError, like a closed terminal
        return True


def _train(stream, tmp_path, total=6):
    logger = TrainingLogger(tmp_path, "srn", total=total, batch_size=4, tensorboard=False, stream=stream)
    for it in range(1, total + 1):
        logger.advance(it)
        if it % 3 == 0:
            logger.log(it, {"l1": 0.25, "total": 0.5}, lr=1e-4)
    logger.close()
    return stream.getvalue()


def test_training_logs_plain_lines_when_not_a_terminal(tmp_path):
    text = _train(io.StringIO(), tmp_path)
    lines = text.splitlines()
    assert len(lines) == 2 and "\r" not in text
    assert lines[0].startswith("[srn]       3/6 ( 50%)") and "eta" in lines[0] and "total=0.5" in lines[0]
    assert (tmp_path / "logs" / "srn.csv").read_text().count("\n") == 3  # header + the two rows


def test_training_shows_a_progress_bar_in_a_terminal(tmp_path):
    text = _train(Terminal(), tmp_path)
    assert "\r" in text  # the bar redraws in place
    assert "6/6" in text and "it/s" in text  # iterations done and the rate
    assert "<00:00" in text  # time left
    assert "total=0.5 lr=0.0001" in text  # the last losses beside the bar
    # the periodic lines are kept above the bar, one per log step
    assert text.count("[srn]       3/6 ( 50%)") == 1 and text.count("[srn]       6/6 (100%)") == 1


def test_a_resumed_stage_starts_its_bar_at_the_checkpoint(tmp_path):
    stream = Terminal()
    logger = TrainingLogger(tmp_path, "dsn", total=10, batch_size=1, start=7, tensorboard=False, stream=stream)
    assert logger.bar.n == 7
    logger.advance(8)
    assert logger.bar.n == 8
    logger.close()
    assert logger.bar is None and "8/10" in stream.getvalue()


def test_bars_only_on_terminals():
    assert progress_bar(5, stream=io.StringIO()) is None
    closed = Terminal()
    closed.close()
    assert not is_terminal(closed) and not is_terminal(object())
    assert progress_bar(5, stream=io.StringIO(), enabled=True) is not None
    assert progress_bar(5, stream=Terminal(), enabled=False) is None


def test_log_lines_go_above_the_bar_in_a_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    logger = logging.getLogger("ddasr_nipype.test_progress")
    handler = logging.StreamHandler()  # on sys.stderr, as the CLIs set it up
    logger.addHandler(handler)
    try:
        bar = progress_bar(3, desc="evaluation")
        with log_above_progress_bars(logger):
            assert handler not in logger.handlers  # replaced by tqdm's, which writes above the bar
            logger.warning("scan 1 of 3")
            bar.update()
        bar.close()
        assert handler in logger.handlers
        with log_above_progress_bars(logger, stream=io.StringIO()):  # not a terminal: nothing changes
            assert handler in logger.handlers
    finally:
        logger.removeHandler(handler)
    text = terminal.getvalue()
    assert "scan 1 of 3\n" in text and "1/3" in text
