"""scripts/memory_table.py: its memory model against the paper's Table 3, and the script as a user runs it."""
import csv
import io
import json

import pytest

from scripts import memory_table

PAPER_CSV = memory_table.PAPER_CSV


@pytest.fixture(scope="module")
def paper_cells():
    if not PAPER_CSV.is_file():
        pytest.skip(f"the paper's Table 3 is not at {PAPER_CSV}")
    return {(c["model"], c["setting"], int(c["batch"]), int(c["seqlen"])): float(c["memory_gb"])
            for c in memory_table.read_paper_cells(PAPER_CSV)}


@pytest.fixture
def run_script(run_cli):
    return lambda *args: run_cli("scripts/memory_table.py", *args, timeout=60)


def csv_rows(text):
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("model, setting, batch, seqlen", [
    ("opt-30b", "W16A16", 1, 2048),
    ("opt-30b", "W4A4", 64, 8192),
    ("opt-66b", "W4A8", 8, 4096),
    ("opt-66b", "W3A3KV", 1, 8192),
    ("opt-175b", "W4A16", 8, 2048),
    ("opt-175b", "W4A3KV", 64, 2048),
    ("opt-175b", "W16A16", 64, 8192),
])
def test_memory_model_matches_paper_cells(paper_cells, model, setting, batch, seqlen):
    parts = memory_table.memory_parts(memory_table.OPT_SHAPES[model], *memory_table.parse_setting(setting),
                                      batch, seqlen)
    assert sum(parts) == pytest.approx(paper_cells[model, setting, batch, seqlen], rel=0.005)


def test_paper_mode_matches_all_cells_within_3_percent(run_script, paper_cells):
    proc = run_script("--paper", PAPER_CSV)
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(proc.stdout)
    assert len(rows) == len(paper_cells) == 189
    assert {(r["model"], r["setting"], int(r["batch"]), int(r["seqlen"])) for r in rows} == set(paper_cells)
    assert max(abs(memory_table.relative_error(r)) for r in rows) < 0.03
    summary = proc.stderr.strip().splitlines()
    assert len(summary) == 1 and "189 cells compared" in summary[0], proc.stderr


def test_model_mode_gives_the_paper_grid_and_parts_sum_to_total(run_script):
    proc = run_script("--model", "opt-1.3b")
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(proc.stdout)
    assert len(rows) == len(memory_table.PAPER_SETTINGS) * 3 * 3
    assert {r["model"] for r in rows} == {"opt-1.3b"} and {r["paper_gb"] for r in rows} == {""}
    assert [r["setting"] for r in rows[::9]] == list(memory_table.PAPER_SETTINGS)
    for r in rows:
        parts = float(r["weight_gb"]) + float(r["kv_gb"]) + float(r["activation_gb"])
        assert parts == pytest.approx(float(r["memory_gb"]), abs=1e-9)


def test_explicit_bits_and_lists(run_script):
    proc = run_script("--model", "opt-125m,opt-13b", "--wbits", "4", "--abits", "8", "--kvbits", "4",
                      "--batch", "1,8", "--seqlen", "512")
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(proc.stdout)
    assert [(r["model"], r["setting"], r["batch"]) for r in rows] == [
        ("opt-125m", "W4A8KV4", "1"), ("opt-125m", "W4A8KV4", "8"),
        ("opt-13b", "W4A8KV4", "1"), ("opt-13b", "W4A8KV4", "8")]
    # The cache and activations grow with the batch; the weights do not.
    assert rows[0]["weight_gb"] == rows[1]["weight_gb"]
    assert float(rows[1]["kv_gb"]) == pytest.approx(8 * float(rows[0]["kv_gb"]), rel=1e-3)


def test_local_config_gives_the_same_rows_as_the_built_in_shape(run_script, tmp_path):
    folder = tmp_path / "opt-1.3b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "opt", "hidden_size": 2048, "num_hidden_layers": 24, "ffn_dim": 8192, "vocab_size": 50272,
        "max_position_embeddings": 2048, "num_attention_heads": 32, "word_embed_proj_dim": 2048}))
    from_config, built_in = run_script("--config", folder / "config.json"), run_script("--model", "opt-1.3b")
    assert from_config.returncode == 0, from_config.stderr
    assert from_config.stdout == built_in.stdout


def test_output_file_is_written_whole_and_nothing_else(run_script, tmp_path):
    out = tmp_path / "table.csv"
    proc = run_script("--model", "opt-2.7b", "--wbits", "4", "--output", out)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert len(csv_rows(out.read_text())) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


@pytest.mark.parametrize("label, bits", [
    ("W16A16", (16, 16, 16)),
    ("W4A16", (4, 16, 16)),
    ("W8A8", (8, 8, 8)),
    ("W4A4", (4, 4, 4)),
    ("W4A4KV", (4, 16, 4)),
    ("W3A3KV", (3, 16, 3)),
    ("w4a8kv4", (4, 8, 4)),
])
def test_setting_labels(label, bits):
    assert memory_table.parse_setting(label) == bits
    assert memory_table.parse_setting(memory_table.setting_label(*bits)) == bits


@pytest.mark.parametrize("label", ["", "W4", "A4W4", "W4A4K", "W4A4KVX"])
def test_bad_setting_label_is_refused(label):
    with pytest.raises(ValueError, match="unknown setting"):
        memory_table.parse_setting(label)


@pytest.mark.parametrize("args, expected", [
    ([], "give --paper, --model or --config"),
    (["--model", "opt-7b"], "unknown model 'opt-7b'"),
    (["--model", "opt-1.3b", "--wbits", "0"], "--wbits must be between 1 and 16"),
    (["--model", "opt-1.3b", "--kvbits", "17"], "--kvbits must be between 1 and 16"),
    (["--model", "opt-1.3b", "--batch", "0"], "expected positive integers"),
    (["--model", "opt-1.3b", "--seqlen", "2k"], "expected a comma list of integers"),
    (["--paper", "--batch", "8"], "drop --batch"),
    (["--paper", "--model", "opt-1.3b"], "not allowed with"),
    (["--paper", "/no/such/table.csv"], "/no/such/table.csv"),
    (["--config", "/no/such/config.json"], "/no/such/config.json"),
])
def test_bad_input_exits_2_with_one_line(run_script, args, expected):
    proc = run_script(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memory_table.py: error: ") and expected in lines[0], proc.stderr


@pytest.mark.parametrize("content, expected", [
    ("[1, 2]", "names no model_type"),
    ("{not json", "cannot read"),
    (json.dumps({"model_type": "opt", "hidden_size": -768, "num_hidden_layers": 12, "ffn_dim": 3072,
                 "vocab_size": 50272, "max_position_embeddings": 2048, "num_attention_heads": 12}),
     "sizes must be positive"),
])
def test_bad_config_files_exit_2_with_one_line(run_script, one_line_error, tmp_path, content, expected):
    (tmp_path / "config.json").write_text(content)
    one_line_error(run_script("--config", tmp_path / "config.json"), expected)


@pytest.mark.parametrize("content", ["", "model,setting,batch,seqlen,memory_gb\n"])
def test_an_empty_paper_table_exits_2_with_one_line(run_script, one_line_error, tmp_path, content):
    (tmp_path / "t3.csv").write_text(content)
    one_line_error(run_script("--paper", tmp_path / "t3.csv"), "holds no cells")


def test_an_output_under_a_regular_file_exits_2_with_one_line(run_script, one_line_error, tmp_path):
    (tmp_path / "file").write_text("")
    one_line_error(run_script("--model", "opt-1.3b", "--output", tmp_path / "file" / "t.csv"),
                   "is a file, not a folder")


def test_a_family_shape_counts_grouped_kv_heads_three_mlp_matrices_and_its_head_dim():
    from transformers import LlamaConfig, OPTConfig, Qwen3Config

    smol = memory_table.shape_of(LlamaConfig(hidden_size=576, num_hidden_layers=30, intermediate_size=1536,
                                             vocab_size=49152, num_attention_heads=9, num_key_value_heads=3))
    assert smol.kv_width == 192
    assert memory_table.linear_weight_count(smol) == 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)
    assert memory_table.kv_cache_gib(smol, 16, 1, 2048) * memory_table.GIB == 2 * 30 * 2048 * 192 * 2
    opt = memory_table.shape_of(OPTConfig(hidden_size=2048, num_attention_heads=32, ffn_dim=8192,
                                          num_hidden_layers=24, vocab_size=50272, word_embed_proj_dim=2048))
    assert opt == memory_table.OPT_SHAPES["opt-1.3b"]
    qwen3 = memory_table.shape_of(Qwen3Config(hidden_size=1024, num_hidden_layers=28, intermediate_size=3072,
                                              num_attention_heads=16, num_key_value_heads=8, head_dim=128))
    assert (qwen3.q_width, qwen3.kv_width) == (2048, 1024)  # heads x head_dim, wider than hidden
    assert memory_table.linear_weight_count(qwen3) == 28 * (2 * 1024 * 2048 + 2 * 1024 * 1024 + 3 * 1024 * 3072)
