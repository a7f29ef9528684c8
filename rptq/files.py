"""Writing files so that a reader never sees half of one and an interrupted run loses nothing it finished."""
import os
import pathlib
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path, write, binary=False):
    """write(file) into a temporary file beside path, then rename it: readers never see half a file and an
    interrupted run leaves the previous version intact."""
    def save(tmp):
        with open(tmp, "wb" if binary else "w") as f:
            write(f)

    atomic_save(path, save)


def atomic_save(path, save):
    """As atomic_write, for writers that take a file name: save(temporary path beside path), then rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; results are files like any other
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text))
