import os

import pytest

from rptq.files import atomic_write, write_text


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
