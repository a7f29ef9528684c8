"""scripts/make_random_opt.py: random OPT checkpoints in the requested shape, dtype and shard size."""
import json

import pytest
from safetensors import safe_open

SMALL = ["--layers", 2, "--hidden", 64, "--heads", 4, "--ffn", 128]


@pytest.mark.parametrize("flags, dtype, sharded", [([], "float32", False),
                                                   (["--dtype", "float16", "--max_shard_size", "2MB"], "float16",
                                                    True)])
def test_the_checkpoint_has_the_asked_shape_dtype_and_shards(run_cli, smollm2, tmp_path, flags, dtype, sharded):
    proc = run_cli("scripts/make_random_opt.py", tmp_path, *SMALL, *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["ffn_dim"], config["dtype"]) == (2, 64, 128,
                                                                                                       dtype)
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert (len(shards) > 1) == sharded == (tmp_path / "model.safetensors.index.json").is_file()
    with safe_open(shards[-1], framework="pt") as f:
        assert all(str(f.get_tensor(k).dtype) == f"torch.{dtype}" for k in f.keys())
    assert (tmp_path / "tokenizer.json").is_file()


@pytest.mark.parametrize("flags, expected", [(["--layers", 0], "--layers must be at least 1"),
                                             (["--hidden", 66], "--hidden 66 must be a multiple of --heads 4"),
                                             (["--folder_under_a_file"], "cannot be written")])
def test_bad_input_is_one_line_and_exit_2(run_cli, one_line_error, tmp_path, flags, expected):
    folder = tmp_path / "out"
    if flags == ["--folder_under_a_file"]:
        (tmp_path / "file").write_text("")
        folder, flags = tmp_path / "file" / "out", []
    one_line_error(run_cli("scripts/make_random_opt.py", folder, *SMALL, *flags), expected)
    assert not (tmp_path / "out").exists()
