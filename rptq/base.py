"""The bottom of the project: errors that carry what was wrong as data, registries, the file plumbing (atomic
writes, checks of where a run will write, hashes, the cache root) and whether the Hugging Face hub can be used. It
imports nothing of the project, so every layer (quantize, models, datautils, rptq, the CLI) may import it.
"""
import contextlib
import errno
import hashlib
import os
import pathlib
import shutil
import socket
import tempfile
import urllib.parse

_UMASK = os.umask(0)
os.umask(_UMASK)


class _Names(dict):
    """format_map's mapping: data fields by name, any other field is a setting named by `name`."""

    def __init__(self, data, name):
        super().__init__(data)
        self.name = name

    def __missing__(self, key):
        return self.name(key)


class Message:
    """One line for the user that may name settings. The text is a str.format template: a field that is a key of
    `data` is filled with that value, any other field names a setting (RunConfig's field name, e.g. {percdamp}).
    str() names settings as the library does; a command line renders them as its flags (render(lambda name:
    f"--{name}")). `option` is the setting the line is about, if one is. A text given neither `option` nor data is
    used as it is, braces and all."""

    def __init__(self, text, *, option=None, **data):
        self.text, self.option, self.data = text, option, data

    def render(self, name=lambda setting: setting):
        if not self.data and self.option is None:
            return self.text
        return self.text.format_map(_Names(self.data, name))

    def __str__(self):
        return self.render()


class RPTQError(Exception):
    """Bad input or a state the run cannot go on from: one line saying what is wrong and what to do, as a Message
    (what was wrong is its data; `option` the setting at fault)."""

    def __init__(self, text, *, option=None, **data):
        self.message = Message(text, option=option, **data)
        super().__init__(str(self.message))

    @property
    def option(self):
        return self.message.option

    def render(self, name=lambda setting: setting):
        return self.message.render(name)


class Registry(dict):
    """Name -> class of one kind (granularities, range metrics, weight quantizers, model families), filled by
    @REGISTRY.register(name) as the modules that define them are imported."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def register(self, name):
        def add(cls):
            assert name not in self, f"{self.kind} {name!r} registered twice"
            cls.name = name
            self[name] = cls()
            return cls
        return add

    def __missing__(self, name):
        raise RPTQError(f"unknown {self.kind} {{name!r}} (choose from {{choices}})", name=name,
                        choices=", ".join(self))


# ---- files ----

class PathError(RPTQError):
    """A place a run must write to cannot take it (a file where a folder is expected, no permission, a read-only
    filesystem, a full disk)."""


# what libraries that do their own I/O (safetensors) say when the disk refuses a write, and the reason to give
_WRITE_FAILURES = {"No space left on device": "the disk is full",
                   "File too large": "the file size limit is reached",
                   "Disk quota exceeded": "the disk quota is exceeded",
                   "Read-only file system": "a read-only filesystem"}


def _reason(error):
    if not isinstance(error, OSError):
        return next(reason for text, reason in _WRITE_FAILURES.items() if text in str(error))
    return {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "a read-only filesystem", errno.EACCES: "no permission", errno.EPERM: "no permission",
            errno.EFBIG: "the file size limit is reached"}.get(error.errno, error.strerror or str(error))


def write_failure(error):
    """Whether error is a place refusing a write (an OSError, or a library's report of a full disk)."""
    return isinstance(error, OSError) or any(text in str(error) for text in _WRITE_FAILURES)


def path_error(error, path, what="write"):
    """A write failure met at path, as one line naming the place and the reason."""
    return PathError("cannot {what} {path}: {reason}", what=what, path=str(path), reason=_reason(error))


@contextlib.contextmanager
def atomic_path(path):
    """A temporary name beside path, for a writer that wants a file name; renamed to path when the block ends, removed
    if it fails: readers never see half a file and an interrupted run leaves the previous version intact. A write
    the disk refuses (full, a size limit, read-only) is a PathError naming path."""
    path = pathlib.Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; results are files like any other
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(e, Exception) and not isinstance(e, RPTQError) and write_failure(e):
            raise path_error(e, path) from None
        raise


@contextlib.contextmanager
def atomic_folder(path, exclusive=False):
    """A temporary folder beside path, filled in the block and renamed to path when it ends (an empty folder there is
    replaced), removed if it fails: readers see a whole folder or none. When another process has filled path
    meanwhile, its copy is kept and this one discarded (a cache), or, exclusive, a PathError says so. A write the
    disk refuses is a PathError naming path."""
    path = pathlib.Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        for file in tmp.rglob("*"):  # some writers (safetensors) make their files private: a folder is shared whole
            if file.is_file():
                os.chmod(file, 0o666 & ~_UMASK)
        try:
            os.rename(tmp, path)
        except OSError as e:
            if exclusive or not path.is_dir():
                raise path_error(e, path, "fill") from None
    except Exception as e:
        if isinstance(e, RPTQError) or not write_failure(e):
            raise
        raise path_error(e, path) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write(path, write, binary=False):
    """write(file) into a temporary file beside path, then rename it (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb" if binary else "w") as f:
        write(f)


def write_text(path, text):
    atomic_write(path, lambda f: f.write(text))


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


def _probe_leaving_nothing(folder):
    """probe_folder, then remove the folders it made, so that a run refused later leaves nothing behind. NotADirectory
    when a part of the path is a file."""
    existing = next(p for p in (pathlib.Path(folder).absolute(), *pathlib.Path(folder).absolute().parents)
                    if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder")
    missing = [p for p in pathlib.Path(folder).absolute().parents if not p.exists()][::-1]
    if not pathlib.Path(folder).exists():
        missing.append(pathlib.Path(folder).absolute())
    try:
        probe_folder(folder)
    finally:
        for made in reversed(missing):
            with contextlib.suppress(OSError):  # a folder someone else has filled meanwhile stays
                made.rmdir()


def _subject(option, what):
    """How a path check's line starts: the setting that names the path ({option}), or what the path is."""
    return "{%s} {path}" % option if option else f"{what} {{path}}"


def check_file(path, option=None, what="the file"):
    """Refuse now, with one line, a file that could not be written when its contents are ready: a path that is a
    folder, a parent that is a file, a folder that cannot be made or written (permission, read-only filesystem).
    option: the setting that names it (else `what` says what it is)."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise PathError(_subject(option, what) + " is a folder, not a file: give a file name", option=option,
                        path=str(path))
    try:
        _probe_leaving_nothing(path.parent)
    except OSError as e:
        raise PathError(_subject(option, what) + " cannot be written ({reason}): choose another place",
                        option=option, path=str(path), reason=_reason(e)) from None


def check_folder(path, option=None, what="the folder"):
    """Refuse now, with one line, a folder a run could not make or write into (see check_file)."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(_subject(option, what) + " is a file, not a folder: give a folder", option=option,
                        path=str(path))
    try:
        _probe_leaving_nothing(path)
    except OSError as e:
        raise PathError(_subject(option, what) + " cannot be written ({reason}): choose another place",
                        option=option, path=str(path), reason=_reason(e)) from None


# ---- the Hugging Face hub: clients retry for minutes when it cannot be reached, so callers ask first ----

def hub_offline() -> bool:
    """The user asked Hugging Face libraries to use their local cache only."""
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


def hub_reachable(timeout=3.0) -> bool:
    """Whether the hub answers a TCP connection within timeout seconds."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False
