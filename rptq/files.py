"""Writing files so that a reader never sees half of one and an interrupted run loses nothing it finished."""
import contextlib
import hashlib
import os
import pathlib
import shutil
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


@contextlib.contextmanager
def atomic_folder(path):
    """A temporary folder beside path, filled in the block and renamed to path when it ends, removed if it fails. When
    another process has made path meanwhile, its copy is kept and this one discarded: readers see a whole folder or
    none."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def cache_root():
    """Where rebuildable files are kept (tokenized windows, converted models): $RPTQ_CACHE_DIR or ~/.cache/rptq."""
    return pathlib.Path(os.environ.get("RPTQ_CACHE_DIR") or "~/.cache/rptq").expanduser()


def probe_folder(folder):
    """Make folder (and its parents) and write and remove a file there; OSError if it cannot be written."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=folder, prefix=".rptq.", suffix=".probe")
    os.close(fd)
    os.unlink(probe)


def check_writable(path, what="--output_path"):
    """Refuse now, with one line, a file that could not be written when its results are ready: a folder that cannot
    be made or written, a parent that is a file, a path that is a folder. Writes and removes a probe file, and the
    folders it made for it, so that a run refused later leaves nothing behind."""
    from .cli import UsageError

    path = pathlib.Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file: give a .json file name or a folder name")
    missing = [p for p in path.absolute().parents if not p.exists()]  # deepest first
    try:
        probe_folder(path.parent)
    except OSError as e:
        raise UsageError(f"{what} {path} cannot be written ({e.strerror or e}): choose another place") from None
    finally:
        for folder in missing:
            with contextlib.suppress(OSError):  # a folder someone else has filled meanwhile stays
                folder.rmdir()


def atomic_write(path, write, binary=False):
    """write(file) into a temporary file beside path, then rename it (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text))
