"""Token windows for perplexity evaluation and calibration (RPTQ-METHOD.md sections 3, 8, 11).

Text comes from a local folder laid out like shared/offline-data (argument or env RPTQ_DATA_DIR) or,
without one, from the Hugging Face hub through `datasets`. Results are cached as torch files.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import random
from dataclasses import dataclass

import torch

from rptq.base import RPTQError, atomic_write, cache_root, file_sha256, hub_offline, hub_reachable

EVAL_SETS = ("wikitext2", "ptb", "c4")
CALIB_SETS = ("mix", "wikitext2", "ptb", "c4", "random")  # random: uniform token ids, for timing and memory runs

# The protocol's C4 evaluation: 256 random windows drawn with seed 0.
C4_EVAL_WINDOWS = 256
C4_EVAL_SEED = 0
# Bump when the windowing changes, so that old cache files stop matching.
_CACHE_FORMAT = 1

_LAYOUT_HINT = "point {data_dir} or RPTQ_DATA_DIR at a folder laid out like shared/offline-data"
_C4_LOCAL = "c4/c4-train.00000-of-01024.first1000.jsonl"
_C4_HUB = "allenai/c4"
_C4_HUB_FILES = {
    "validation": "en/c4-validation.00000-of-00008.json.gz",
    "train": "en/c4-train.00000-of-01024.json.gz",
}


class DataError(RPTQError):
    """One clear line: what is wrong and what to do."""


def _layout_error(text, **data):
    return DataError(f"{text}: {_LAYOUT_HINT}", option="data_dir", **data)


def _document(line, column, path, lineno):
    """One JSON-lines document's text, or one line saying which line of which file is broken."""
    try:
        text = json.loads(line)[column]
    except (json.JSONDecodeError, KeyError, TypeError):
        text = None
    if not isinstance(text, str):
        raise _layout_error("{path} line {lineno} is not a JSON object with a '{column}' text", path=str(path),
                            lineno=lineno, column=column)
    return text


def _wikitext_rows(lines):
    # The Hugging Face wikitext builder yields blank lines as "" and keeps the newline on the others.
    return [line if line.strip() else "" for line in lines]


def _ptb_rows(lines):
    # The Hugging Face ptb_text_only builder strips every line.
    return [line.strip() for line in lines]


@dataclass(frozen=True)
class _Source:
    local: str  # path under the data folder
    hub_path: str
    hub_name: str | None
    hub_split: str
    column: str
    line_rows: object = None  # rows from a text file's lines; None: C4 json lines, one document a line
    docs: tuple[int, int] | None = None  # C4 document range in the local file
    hub_docs: tuple[int, int] | None = None  # C4 document range in the hub shard

    def path(self, root: pathlib.Path) -> pathlib.Path:
        path = root / self.local
        if not path.is_file():
            raise _layout_error("missing {file} in {root}", file=self.local, root=str(root))
        return path

    def local_id(self, root: pathlib.Path) -> str:
        """The file's content, not its name, size or time: an edited file never serves stale windows."""
        return f"{self.local}|sha256={file_sha256(self.path(root))}|docs={self.docs}"

    def hub_id(self) -> str:
        return f"hub|{self.hub_path}|{self.hub_name}|{self.hub_split}|{self.column}|docs={self.hub_docs}"

    def local_rows(self, root: pathlib.Path) -> list[str]:
        path = self.path(root)
        try:
            with open(path, encoding="utf-8") as f:
                if self.line_rows is not None:
                    return self.line_rows(f)
                lines = f.readlines()
        except UnicodeDecodeError as e:
            raise _layout_error("{path} is not UTF-8 text (byte {byte}): restore it", path=str(path),
                                byte=e.start) from None
        start, stop = self.docs
        if len(lines) < stop:
            raise _layout_error("{path} holds {n} documents, {stop} needed", path=str(path), n=len(lines), stop=stop)
        return [_document(line, self.column, path, i + 1) for i, line in enumerate(lines[start:stop], start)]

    def hub_rows(self) -> list[str]:
        what = f"{self.hub_path} ({self.hub_split})"
        advice = "set {data_dir} or RPTQ_DATA_DIR (layout: shared/offline-data)"
        offline = hub_offline()
        if not offline and not hub_reachable():
            raise DataError("cannot reach the Hugging Face hub to download {what}; " + advice, option="data_dir",
                            what=what)
        import datasets  # slow import, only needed on this path

        data_files = {self.hub_split: _C4_HUB_FILES[self.hub_split]} if self.hub_path == _C4_HUB else None
        try:
            ds = datasets.load_dataset(self.hub_path, self.hub_name, split=self.hub_split, data_files=data_files)
        except Exception as e:  # any hub failure becomes one line of advice, not a long traceback
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            mode = " in offline mode (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE)" if offline else ""
            raise DataError("cannot load {what} from the Hugging Face hub{mode}: {reason}; " + advice,
                            option="data_dir", what=what, mode=mode, reason=reason) from None
        if self.hub_docs:
            return ds[self.hub_docs[0] : self.hub_docs[1]][self.column]
        return ds[self.column]


_WIKI_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")
_PTB_HUB = ("ptb-text-only/ptb_text_only", "penn_treebank")
_SOURCES = {
    ("wikitext2", "eval"): _Source("wikitext-2-raw/wiki.test.raw", *_WIKI_HUB, "test", "text", _wikitext_rows),
    # The WikiText-2 training split is not available offline: its validation split stands in.
    ("wikitext2", "calib"): _Source("wikitext-2/wiki.valid.tokens", *_WIKI_HUB, "train", "text", _wikitext_rows),
    ("ptb", "eval"): _Source("ptb/ptb.valid.txt", *_PTB_HUB, "validation", "sentence", _ptb_rows),
    # The PTB training split is not available offline: its test split stands in.
    ("ptb", "calib"): _Source("ptb/ptb.test.txt", *_PTB_HUB, "train", "sentence", _ptb_rows),
    # Offline, C4 is evaluated on a proxy (train documents 500-999, joined); on the hub, on windows inside
    # random long documents of the whole first validation shard, as the reference samples them.
    ("c4", "eval"): _Source(_C4_LOCAL, _C4_HUB, None, "validation", "text", docs=(500, 1000)),
    # Documents 0-499 of train shard 00000: the same text locally and on the hub.
    ("c4", "calib"): _Source(_C4_LOCAL, _C4_HUB, None, "train", "text", docs=(0, 500), hub_docs=(0, 500)),
}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> pathlib.Path | None:
    """The data folder: the argument, else env RPTQ_DATA_DIR, else None (use the Hugging Face hub)."""
    chosen = data_dir if data_dir not in (None, "") else os.environ.get("RPTQ_DATA_DIR") or None
    if chosen is None:
        return None
    path = pathlib.Path(chosen).expanduser()
    if not path.is_dir():
        raise _layout_error("data folder {path} does not exist", path=str(path))
    return path.resolve()


def eval_label(name: str, data_dir) -> str:
    """The name to report a perplexity under; local C4 is a proxy and must say so."""
    _check_name(name, EVAL_SETS)
    if name == "c4" and resolve_data_dir(data_dir) is not None:
        return "c4-proxy"
    return name


def load_text(name: str, purpose: str, data_dir=None) -> str:
    """The whole text of a set ("eval" or "calib"), rows joined with a blank line as the protocol does."""
    _check_name(name, EVAL_SETS)
    _check_name(purpose, ("eval", "calib"), "purpose")
    root = resolve_data_dir(data_dir)
    return _text(_SOURCES[(name, purpose)], root)


def _needed(eval_sets, calib_set):
    """The (set, purpose) text sources a run reads (random token ids read none)."""
    calib_parts = {None: (), "random": (), "mix": EVAL_SETS}.get(calib_set, (calib_set,))
    return [(n, "eval") for n in eval_sets] + [(n, "calib") for n in calib_parts]


def check_sources(eval_sets=(), calib_set=None, data_dir=None):
    """Raise DataError now for any local file a run will need that is missing or does not decode, rather than
    after a long quantization."""
    root = resolve_data_dir(data_dir)
    if root is None:
        return
    for key in _needed(eval_sets, calib_set):
        _SOURCES[key].local_rows(root)


def describe_sources(eval_sets=(), calib_set=None, data_dir=None) -> list[dict]:
    """Which data a run uses, for its record: each local file by its path inside the data folder and its sha256
    (no machine path), or the hub data set."""
    root = resolve_data_dir(data_dir)
    out = []
    for name, purpose in _needed(eval_sets, calib_set):
        source = _SOURCES[(name, purpose)]
        if root is None:
            entry = {"hub": " ".join(filter(None, (source.hub_path, source.hub_name, source.hub_split))),
                     "documents": source.hub_docs and list(source.hub_docs)}
        else:
            entry = {"file": source.local, "sha256": file_sha256(source.path(root)),
                     "documents": source.docs and list(source.docs)}
        out.append({"set": name, "purpose": purpose, **{k: v for k, v in entry.items() if v is not None}})
    if calib_set == "random":
        out.append({"set": "random", "purpose": "calib", "tokens": "uniform token ids"})
    return out


def get_eval_windows(name, tokenizer, seqlen=2048, data_dir=None, cache_dir=None) -> torch.Tensor:
    """[n_windows, seqlen] token ids of a test text, tokenized once.

    wikitext2 and ptb: consecutive non-overlapping windows, tail dropped.
    c4: 256 windows drawn with seed 0 (they may overlap): from the hub, each inside a random document of at
    least seqlen + 1 tokens, as the reference does; from the local proxy (too few long documents), at random
    offsets of the joined documents.
    """
    _check_name(name, EVAL_SETS)
    _check_positive(seqlen=seqlen)
    root = resolve_data_dir(data_dir)
    source = _SOURCES[(name, "eval")]
    key = {"set": name, "purpose": "eval", "seqlen": seqlen, "source": _source_id(source, root)}
    if name == "c4":
        key.update(nsamples=C4_EVAL_WINDOWS, seed=C4_EVAL_SEED)

    def build():
        if name == "c4" and root is None:
            return _document_windows(source.hub_rows(), tokenizer, seqlen, C4_EVAL_WINDOWS, random.Random(C4_EVAL_SEED))
        ids = _tokenize(source, root, tokenizer)
        if name == "c4":
            return _random_windows(ids, seqlen, C4_EVAL_WINDOWS, random.Random(C4_EVAL_SEED), name)
        if ids.numel() < seqlen:
            raise DataError("{name} test text has {n} tokens, fewer than {seqlen}={value}", option="seqlen", name=name,
                            n=ids.numel(), value=seqlen)
        n = ids.numel() // seqlen
        return ids[: n * seqlen].reshape(n, seqlen)

    return _cached(key, tokenizer, cache_dir, build)


def get_calib_windows(name, tokenizer, nsamples, seed, seqlen=2048, data_dir=None, cache_dir=None) -> torch.Tensor:
    """[nsamples, seqlen] random slices of calibration token streams, drawn with random.Random(seed).

    mix: exactly nsamples rows, split as evenly as possible over wikitext2, ptb, c4 (in that order). random: uniform
    token ids of the tokenizer's vocabulary from torch.Generator(seed), no text: for runs whose timing or memory, not
    figures, is measured.
    """
    _check_name(name, CALIB_SETS)
    _check_positive(seqlen=seqlen, nsamples=nsamples)
    if name == "random":
        return torch.randint(0, len(tokenizer), (nsamples, seqlen), generator=torch.Generator().manual_seed(seed))
    root = resolve_data_dir(data_dir)
    parts = EVAL_SETS if name == "mix" else (name,)
    base, extra = divmod(nsamples, len(parts))
    counts = [base + (i < extra) for i in range(len(parts))]
    sources = [_SOURCES[(part, "calib")] for part in parts]
    key = {
        "set": name,
        "purpose": "calib",
        "seqlen": seqlen,
        "nsamples": nsamples,
        "seed": seed,
        "source": [_source_id(s, root) for s in sources],
    }

    def build():
        rng = random.Random(seed)  # one generator for all parts, drawn in a fixed order
        rows = [
            _random_windows(_tokenize(s, root, tokenizer), seqlen, count, rng, part)
            for part, s, count in zip(parts, sources, counts)
            if count
        ]
        return torch.cat(rows)

    return _cached(key, tokenizer, cache_dir, build)


def _check_name(name, allowed, what="data set"):
    if name not in allowed:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(allowed)}")


def _check_positive(**values):
    for label, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive integer, got {value!r}")


def _source_id(source: _Source, root: pathlib.Path | None) -> str:
    return source.hub_id() if root is None else source.local_id(root)


def _text(source: _Source, root: pathlib.Path | None) -> str:
    return "\n\n".join(source.hub_rows() if root is None else source.local_rows(root))


def _tokenize(source: _Source, root, tokenizer) -> torch.Tensor:
    # The whole text at once with default special tokens: a BOS-adding tokenizer (OPT) puts one BOS at the start.
    return tokenizer(_text(source, root), return_tensors="pt").input_ids[0]


def _random_windows(ids: torch.Tensor, seqlen: int, count: int, rng: random.Random, name: str) -> torch.Tensor:
    if ids.numel() < seqlen + 1:
        raise DataError("{name} text has {n} tokens, fewer than {seqlen}+1={value}", option="seqlen", name=name,
                        n=ids.numel(), value=seqlen + 1)
    starts = [rng.randint(0, ids.numel() - seqlen - 1) for _ in range(count)]
    return torch.stack([ids[s : s + seqlen] for s in starts])


def _document_windows(docs, tokenizer, seqlen, count, rng, max_draws=1_000_000):
    """count windows, each from a random document long enough for it, at a random offset inside it."""
    windows = []
    for _ in range(max_draws):
        if len(windows) == count:
            return torch.stack(windows)
        ids = tokenizer(docs[rng.randint(0, len(docs) - 1)], return_tensors="pt").input_ids[0]
        if ids.numel() > seqlen:
            start = rng.randint(0, ids.numel() - seqlen - 1)
            windows.append(ids[start : start + seqlen])
    raise DataError("too few documents of more than {n} tokens to draw {count} windows", n=seqlen, count=count)


def _tokenizer_id(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        identity = backend.to_str()
    else:
        identity = json.dumps([tokenizer.name_or_path, sorted(tokenizer.get_vocab().items())])
    flags = [getattr(tokenizer, attr, None) for attr in ("add_bos_token", "add_eos_token")]
    return hashlib.sha256((identity + json.dumps(flags)).encode("utf-8")).hexdigest()


def _cache_folder(cache_dir) -> pathlib.Path | None:
    if cache_dir is False:
        return None
    return cache_root() if cache_dir is None else pathlib.Path(cache_dir).expanduser()


def _load_cached(path: pathlib.Path, key: dict):
    """The windows in a cache file, or None when it is unreadable or not what the key describes (then rebuilt)."""
    try:
        windows = torch.load(path, weights_only=True)
    except Exception:  # truncated or corrupt files raise many kinds; any of them means "rebuild"
        return None
    rows = key.get("nsamples")
    if (not isinstance(windows, torch.Tensor) or windows.dtype != torch.long or windows.dim() != 2
            or windows.shape[1] != key["seqlen"] or windows.shape[0] < 1 or (rows and windows.shape[0] != rows)):
        return None
    return windows


def _cached(key: dict, tokenizer, cache_dir, build) -> torch.Tensor:
    folder = _cache_folder(cache_dir)
    if folder is None:
        return build()
    key = {**key, "format": _CACHE_FORMAT, "tokenizer": _tokenizer_id(tokenizer)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:24]
    path = folder / f"{key['purpose']}-{key['set']}-{key['seqlen']}-{digest}.pt"
    windows = _load_cached(path, key) if path.is_file() else None
    if windows is None:
        windows = build()
        atomic_write(path, lambda f: torch.save(windows, f), binary=True)
    return windows
