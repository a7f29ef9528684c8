import os

import pytest

from rptq.cli import UsageError
from rptq.files import atomic_folder, atomic_write, check_writable, write_text


def test_atomic_write_leaves_one_file_with_the_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write(path, lambda f: f.write("{}"))
    umask = os.umask(0)
    os.umask(umask)
    assert path.read_text() == "{}" and os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "table.md"
    write_text(path, "finished")

    def fail(f):
        f.write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, fail)
    assert path.read_text() == "finished" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_atomic_folder_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_folder(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("whole")
        assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (tmp_path / "model" / "weights").read_text() == "whole"


def test_atomic_folder_made_meanwhile_by_another_process_is_kept(tmp_path):
    with atomic_folder(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("mine")
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "weights").write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (tmp_path / "model" / "weights").read_text() == "theirs"


def test_check_writable_leaves_no_trace(tmp_path):
    """The probe makes the folders it needs and removes them again: a run refused later leaves nothing behind."""
    check_writable(tmp_path / "a" / "b" / "run.json")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    check_writable(tmp_path / "kept" / "run.json")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_check_writable_refuses_a_folder_and_a_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    for bad, expected in [(tmp_path, "is a folder"), (tmp_path / "file" / "run.json", "cannot be written")]:
        with pytest.raises(UsageError, match=expected):
            check_writable(bad)
