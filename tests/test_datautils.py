import os
import random
import subprocess
import sys
import time

import pytest
import torch

import datautils
import rptq.base
from datautils import DataError


@pytest.fixture(scope="module")
def tok(smol_tokenizer):
    return smol_tokenizer


@pytest.fixture
def no_hub_env(monkeypatch):
    for var in ("RPTQ_DATA_DIR", "HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def test_wikitext2_rows_match_hugging_face_length(data_dir):
    text = datautils.load_text("wikitext2", "eval", data_dir)
    assert len(text) == 1_294_336
    assert text.startswith("\n\n = Robert Boulter = \n")  # first HF row is "", the heading keeps its newline


def test_eval_windows_are_consecutive_slices_of_one_tokenization(tok, data_dir):
    ids = tok(datautils.load_text("wikitext2", "eval", data_dir), return_tensors="pt").input_ids[0]
    windows = datautils.get_eval_windows("wikitext2", tok, seqlen=2048, data_dir=data_dir, cache_dir=False)
    assert windows.dtype == torch.long
    assert windows.shape == (ids.numel() // 2048, 2048)
    assert torch.equal(windows.flatten(), ids[: windows.numel()])


def test_ptb_and_c4_eval_windows(tok, data_dir):
    ptb = datautils.get_eval_windows("ptb", tok, seqlen=2048, data_dir=data_dir, cache_dir=False)
    n_ptb = tok(datautils.load_text("ptb", "eval", data_dir), return_tensors="pt").input_ids.shape[1]
    assert ptb.shape == (n_ptb // 2048, 2048)

    c4 = datautils.get_eval_windows("c4", tok, seqlen=2048, data_dir=data_dir, cache_dir=False)
    assert c4.shape == (256, 2048)
    assert len({row[0].item() for row in c4}) > 1  # random offsets, not one window repeated
    assert datautils.eval_label("c4", data_dir) == "c4-proxy"
    assert datautils.eval_label("wikitext2", data_dir) == "wikitext2"


@pytest.mark.parametrize("nsamples", [1, 2, 3, 128])
def test_mix_draws_exactly_nsamples(tok, nsamples, data_dir):
    windows = datautils.get_calib_windows("mix", tok, nsamples, seed=2, seqlen=256, data_dir=data_dir, cache_dir=False)
    assert windows.shape == (nsamples, 256)
    assert (windows != 0).any(dim=1).all()


def test_mix_splits_evenly_in_a_fixed_order(tok, data_dir):
    # 128 -> 43 wikitext2, 43 ptb, 42 c4; the wikitext2 rows come first, drawn by the same generator.
    mix = datautils.get_calib_windows("mix", tok, 128, seed=5, seqlen=256, data_dir=data_dir, cache_dir=False)
    wiki = datautils.get_calib_windows("wikitext2", tok, 44, seed=5, seqlen=256, data_dir=data_dir, cache_dir=False)
    assert torch.equal(mix[:43], wiki[:43])
    assert not torch.equal(mix[43], wiki[43])


def test_stream_shorter_than_window_is_an_error(tok, data_dir):
    with pytest.raises(DataError, match="fewer than seqlen"):
        datautils.get_calib_windows("ptb", tok, 1, seed=0, seqlen=10**6, data_dir=data_dir, cache_dir=False)


def test_calibration_seed_determinism(tok, data_dir):
    def draw(seed):
        return datautils.get_calib_windows("ptb", tok, 8, seed=seed, seqlen=512, data_dir=data_dir, cache_dir=False)

    first = draw(2)
    assert torch.equal(first, draw(2))
    assert not torch.equal(first, draw(3))


def test_cache_hits_and_misses(tok, tmp_path, data_dir):
    def draw(seed, seqlen):
        return datautils.get_calib_windows("ptb", tok, 4, seed=seed, seqlen=seqlen, data_dir=data_dir,
                                           cache_dir=tmp_path)

    first = draw(2, 512)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert torch.equal(draw(2, 512), first)
    assert len(list(tmp_path.iterdir())) == 1  # a hit writes nothing

    # A stale file under the same name must be what a hit returns: proves the hit reads the cache.
    torch.save(torch.zeros_like(first), files[0])
    assert not draw(2, 512).any()

    draw(3, 512)
    draw(2, 256)
    assert len(list(tmp_path.iterdir())) == 3
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_file_names_file_and_folder(tok, tmp_path, data_dir):
    (tmp_path / "ptb").mkdir()
    with pytest.raises(DataError) as err:
        datautils.get_eval_windows("ptb", tok, data_dir=tmp_path, cache_dir=False)
    assert "ptb/ptb.valid.txt" in str(err.value) and str(tmp_path) in str(err.value)


def test_nonexistent_data_dir(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere"):
        datautils.resolve_data_dir(missing)
    monkeypatch.setenv("RPTQ_DATA_DIR", str(missing))
    with pytest.raises(DataError, match="nowhere"):
        datautils.resolve_data_dir(None)


def test_no_data_dir_means_hub(no_hub_env):
    assert datautils.resolve_data_dir(None) is None
    assert datautils.eval_label("c4", None) == "c4"


def test_unreachable_hub_fails_fast(no_hub_env, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(rptq.base.socket, "create_connection", refuse)
    start = time.monotonic()
    with pytest.raises(DataError, match="cannot reach the Hugging Face hub"):
        datautils.get_eval_windows("wikitext2", None, cache_dir=False)
    assert time.monotonic() - start < 10


def test_offline_hub_without_cache_fails_fast(root, tmp_path):
    # A fresh process: `datasets` reads the offline switch when imported.
    env = {k: v for k, v in os.environ.items() if k != "RPTQ_DATA_DIR"}
    env.update(HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path))
    # Only the call is timed: importing torch and datasets in a new process can take longer on a busy machine.
    code = (
        "import time, datasets, datautils\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    datautils.get_calib_windows('ptb', None, 4, seed=0, cache_dir=False)\n"
        "except datautils.DataError as e:\n"
        "    print('DataError:', e)\n"
        "print('seconds:', time.monotonic() - start)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert "DataError: cannot load ptb-text-only/ptb_text_only (train) from the Hugging Face hub" in out.stdout
    assert float(out.stdout.rsplit("seconds:", 1)[1]) < 10


def test_document_windows_come_from_long_enough_documents(tok):
    docs = ["short text", "word " * 400, "tiny", "other " * 300]
    a = datautils._document_windows(docs, tok, 128, 6, random.Random(0))
    b = datautils._document_windows(docs, tok, 128, 6, random.Random(0))
    assert a.shape == (6, 128) and torch.equal(a, b)
    long_ids = [tok(d, return_tensors="pt").input_ids[0] for d in docs[1::2]]
    for w in a:  # every window is a slice of one long document
        assert any(any(torch.equal(w, ids[i:i + 128]) for i in range(ids.numel() - 127)) for ids in long_ids)
    with pytest.raises(DataError, match="too few documents"):
        datautils._document_windows(["tiny"], tok, 128, 1, random.Random(0), max_draws=50)


def _copy_of(data_dir, tmp_path, *files):
    """A data folder holding copies of the given files of the real one (their times kept, as cp -p does)."""
    import shutil

    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data_dir / f, tmp_path / f)
    return tmp_path


def test_cache_follows_the_content_not_the_file_time(tok, tmp_path, data_dir):
    data = _copy_of(data_dir, tmp_path / "data", "ptb/ptb.test.txt")
    path = data / "ptb/ptb.test.txt"

    def draw():
        return datautils.get_calib_windows("ptb", tok, 2, seed=0, seqlen=64, data_dir=data, cache_dir=tmp_path / "c")

    before = draw()
    stat = path.stat()
    path.write_text(path.read_text().replace(" the ", " a "))  # edited in place ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and its time restored
    assert not torch.equal(draw(), before)
    assert len(list((tmp_path / "c").iterdir())) == 2


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "not a tensor"])
def test_a_damaged_cache_file_is_rebuilt(tok, tmp_path, data_dir, damage):
    def draw():
        return datautils.get_calib_windows("ptb", tok, 2, seed=0, seqlen=64, data_dir=data_dir, cache_dir=tmp_path)

    good = draw()
    (cache_file,) = tmp_path.iterdir()
    if damage == "truncated":
        cache_file.write_bytes(cache_file.read_bytes()[:100])
    elif damage == "wrong shape":
        torch.save(torch.zeros(2, 63, dtype=torch.long), cache_file)
    else:
        torch.save({"windows": good}, cache_file)
    assert torch.equal(draw(), good)
    assert torch.equal(torch.load(cache_file, weights_only=True), good)  # and written back whole


def test_text_that_does_not_decode_is_one_line_before_any_work(tmp_path, data_dir):
    data = _copy_of(data_dir, tmp_path, "wikitext-2-raw/wiki.test.raw", "c4/c4-train.00000-of-01024.first1000.jsonl")
    wiki = data / "wikitext-2-raw/wiki.test.raw"
    wiki.write_bytes(wiki.read_bytes()[:1000] + b"\xff\xfe" + wiki.read_bytes()[1000:])
    with pytest.raises(DataError, match="wiki.test.raw is not UTF-8 text"):
        datautils.check_sources(["wikitext2"], None, data)
    c4 = data / "c4/c4-train.00000-of-01024.first1000.jsonl"
    lines = c4.read_text().splitlines(keepends=True)
    c4.write_text("".join(lines[:700] + ['{"text": "cut off\n'] + lines[701:]))
    with pytest.raises(DataError, match="line 701 is not a JSON object"):
        datautils.check_sources(["c4"], None, data)
    datautils.check_sources([], "c4", data)  # calibration reads documents 0-499 only: unharmed


def test_sources_are_described_inside_the_data_folder_with_their_hash(data_dir):
    described = datautils.describe_sources(["wikitext2"], "mix", data_dir)
    assert [(d["set"], d["purpose"]) for d in described] == [("wikitext2", "eval"), ("wikitext2", "calib"),
                                                             ("ptb", "calib"), ("c4", "calib")]
    assert described[0]["file"] == "wikitext-2-raw/wiki.test.raw" and len(described[0]["sha256"]) == 64
    assert described[-1]["documents"] == [0, 500]
    assert str(data_dir) not in str(described)


def test_runs_started_together_on_one_cache_all_succeed_and_leave_it_whole(root, tiny_opt_dir, data_dir, tmp_path):
    """Three processes tokenize the same set into the same cache folder at once: each writes its file beside the
    cached one and renames it into place, so none fails and a reader never sees half a file."""
    import hashlib
    import subprocess
    import sys

    code = ("import hashlib, sys, datautils, transformers\n"
            f"tok = transformers.AutoTokenizer.from_pretrained({str(tiny_opt_dir)!r})\n"
            f"w = datautils.get_eval_windows('wikitext2', tok, 256, {str(data_dir)!r}, {str(tmp_path / 'cache')!r})\n"
            "print(hashlib.sha256(w.numpy().tobytes()).hexdigest())\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1  # the same windows
    (cached,) = (tmp_path / "cache").iterdir()  # one file, no temporary left
    windows = torch.load(cached, weights_only=True)
    assert hashlib.sha256(windows.numpy().tobytes()).hexdigest() == outputs[0][0].strip()
