"""rptq/cli.py: one-line errors, exit codes and device choice shared by main.py and the scripts."""
import pytest
import torch

from datautils import DataError
from rptq.cli import UsageError, check_positions, guarded, pick_device


def test_one_line_errors_exit_2_and_interrupts_130(capsys):
    def fail(error):
        def body():
            raise error
        return body

    assert guarded("x.py", fail(UsageError("bad value"))) == 2
    assert guarded("x.py", fail(DataError("missing file"))) == 2
    assert capsys.readouterr().err.splitlines() == ["x.py: error: bad value", "x.py: error: missing file"]
    assert guarded("x.py", fail(KeyboardInterrupt()), "nothing lost") == 130
    assert capsys.readouterr().err == "x.py: interrupted; nothing lost\n"
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as bad input
        guarded("x.py", fail(ZeroDivisionError()))
    assert guarded("x.py", lambda: 0) == 0


def test_device_and_dtype_choice():
    assert pick_device("cpu") == ("cpu", torch.float32)
    assert pick_device("cpu", "bfloat16") == ("cpu", torch.bfloat16)
    with pytest.raises(UsageError, match="not a torch device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available here"):
            pick_device("cuda")


def test_seqlen_longer_than_the_positions_is_refused(tiny_opt):
    model = tiny_opt(layers=1)
    check_positions(model.config, "tiny", 2048)
    with pytest.raises(UsageError, match="--seqlen 4096 is longer than tiny's 2048 positions"):
        check_positions(model.config, "tiny", 4096)


def test_a_bar_left_open_is_closed_before_the_message(capsys):
    """A bar interrupted just after it is drawn, before its loop or with-block runs, stays open with its line
    unfinished: the message still gets a line of its own."""
    from tqdm import tqdm

    bars = []

    def body():
        bars.append(tqdm(range(3), desc="layers"))  # drawn, never iterated: the interrupt came first
        raise KeyboardInterrupt

    assert guarded("x.py", body, "nothing lost") == 130
    assert capsys.readouterr().err.splitlines()[-1] == "x.py: interrupted; nothing lost"


def test_a_bar_interrupted_inside_its_first_drawing_still_ends_its_line(monkeypatch):
    """The interrupt lands as the bar's first line is flushed, inside tqdm's constructor (the race CI hit): the bar
    looks never drawn to tqdm, yet the message must not follow it on the same line."""
    import io
    import sys

    from tqdm import tqdm

    class InterruptedOnFlush(io.StringIO):
        armed = True

        def flush(self):
            if self.armed and "layers" in self.getvalue():
                self.armed = False
                raise KeyboardInterrupt

    stream = InterruptedOnFlush()
    monkeypatch.setattr(sys, "stderr", stream)
    assert guarded("x.py", lambda: tqdm(range(3), desc="layers", file=stream), "nothing lost") == 130
    drawn, message = stream.getvalue().splitlines()[-2:]
    assert "layers" in drawn and message == "x.py: interrupted; nothing lost"
