"""Writing files so that a reader never sees half of one and an interrupted run loses nothing it finished."""
import contextlib
import os
import pathlib
import tempfile

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary name beside path, for a writer that wants a file name; renamed to path when the block ends, removed
    if it fails: readers never see half a file and an interrupted run leaves the previous version intact."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; results are files like any other
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write(path, write, binary=False):
    """write(file) into a temporary file beside path, then rename it (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text))
