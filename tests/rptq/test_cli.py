"""rptq/cli.py: one-line errors naming flags, exit codes, shared by main.py and the scripts."""
import pytest

from datautils import DataError
from rptq.cli import UsageError, guarded


def test_one_line_errors_exit_2_and_interrupts_130(capsys):
    def fail(error):
        def body():
            raise error
        return body

    assert guarded("x.py", fail(UsageError("bad value"))) == 2
    assert guarded("x.py", fail(DataError("missing file"))) == 2
    assert guarded("x.py", fail(DataError("no {what} in {data_dir}", option="data_dir", what="x"))) == 2
    assert capsys.readouterr().err.splitlines() == ["x.py: error: bad value", "x.py: error: missing file",
                                                    "x.py: error: no x in --data_dir"]
    assert guarded("x.py", fail(KeyboardInterrupt()), "nothing lost") == 130
    assert capsys.readouterr().err == "x.py: interrupted; nothing lost\n"
    with pytest.raises(ZeroDivisionError):  # a bug is not dressed up as bad input
        guarded("x.py", fail(ZeroDivisionError()))
    assert guarded("x.py", lambda: 0) == 0


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
