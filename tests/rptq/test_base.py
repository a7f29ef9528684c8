"""rptq/base.py: messages that name settings, registries, atomic files and path checks, the hub check."""
import os
import time

import pytest

from rptq.base import (
    Message,
    PathError,
    Registry,
    RPTQError,
    atomic_folder,
    atomic_write,
    check_file,
    check_folder,
    hub_offline,
    hub_reachable,
    write_text,
)


def test_a_message_names_settings_by_how_it_is_rendered():
    message = Message("{percdamp} {value} is too small for a {shape} Hessian", option="percdamp", value=0, shape=(2, 2))
    assert str(message) == "percdamp 0 is too small for a (2, 2) Hessian"
    assert message.render(lambda name: f"--{name}") == "--percdamp 0 is too small for a (2, 2) Hessian"
    assert str(Message("a {literal} brace")) == "a {literal} brace"  # no option, no data: used as it is
    error = RPTQError("{save} {path} is a file", option="save", path="/x/{y}")
    assert (error.option, str(error)) == ("save", "save /x/{y} is a file")  # data is not formatted again


def test_a_registry_finds_classes_by_name_and_names_the_choices():
    kinds = Registry("kind")

    @kinds.register("plain")
    class Plain:
        pass

    assert isinstance(kinds["plain"], Plain) and kinds["plain"].name == "plain" and list(kinds) == ["plain"]
    with pytest.raises(RPTQError, match="unknown kind 'fancy' \\(choose from plain\\)"):
        kinds["fancy"]


def test_offline_switches_are_read_from_the_environment(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert not hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", " True ")
    assert hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()


def test_an_unreachable_endpoint_is_known_at_once(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens here
    start = time.monotonic()
    assert not hub_reachable(timeout=2)
    assert time.monotonic() - start < 3


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


def test_atomic_folder_shares_files_a_writer_made_private(tmp_path):
    """safetensors writes its files 0600: a saved model or a converted cache is for every user the umask allows."""
    with atomic_folder(tmp_path / "model") as tmp:
        (tmp / "sub").mkdir()
        for name in ("model.safetensors", "sub/more"):
            (tmp / name).write_text("x")
            os.chmod(tmp / name, 0o600)
    umask = os.umask(0)
    os.umask(umask)
    modes = {os.stat(tmp_path / "model" / n).st_mode & 0o777 for n in ("model.safetensors", "sub/more")}
    assert modes == {0o666 & ~umask} and os.stat(tmp_path / "model").st_mode & 0o777 == 0o777 & ~umask


def test_atomic_folder_made_meanwhile_by_another_process_is_kept(tmp_path):
    with atomic_folder(tmp_path / "model") as tmp:
        (tmp / "weights").write_text("mine")
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "weights").write_text("theirs")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert (tmp_path / "model" / "weights").read_text() == "theirs"


def test_path_checks_leave_no_trace(tmp_path):
    """The probe makes the folders it needs and removes them again: a run refused later leaves nothing behind."""
    check_file(tmp_path / "a" / "b" / "run.json", "output_path")
    check_folder(tmp_path / "c" / "d", "save")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    check_file(tmp_path / "kept" / "run.json", "output_path")
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_path_checks_refuse_a_folder_for_a_file_and_a_path_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [(check_file, tmp_path, "output_path", "is a folder, not a file"),
             (check_file, tmp_path / "file" / "run.json", "output_path", "file is a file, not a folder"),
             (check_folder, tmp_path / "file", "cache_dir", "is a file, not a folder"),
             (check_folder, tmp_path / "file" / "x", "cache_dir", "file is a file, not a folder")]
    for check, bad, option, expected in cases:
        with pytest.raises(PathError) as e:
            check(bad, option)
        assert e.value.option == option and expected in str(e.value)
        assert e.value.render(lambda name: f"--{name}").startswith(f"--{option} {bad}")
