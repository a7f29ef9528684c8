"""rptq/config.py: main.py's flags, which are refused, which only get a note, and the settings they become."""
import pytest

from rptq import config
from rptq.cli import UsageError


def check(*argv, model="opt-125m"):
    args = config.build_parser().parse_args([model, *argv])
    return config.check_args(args, config.given_flags(argv))


def test_a_flag_idle_in_one_setting_of_a_shell_sweep_is_a_note():
    """The authors' scripts pass --nsamples 128 to every setting, the float one too."""
    notes = check("--eval_ppl", "--nsamples", "128", "--metric=minmax")
    assert notes == ["--nsamples changes nothing in this run (--wbits 16 --abits 16): ignored",
                     "--metric changes nothing in this run (--wbits 16 --abits 16): ignored"]
    assert check("--eval_ppl", "--wbits", "4", "--abits", "4", "--nsamples", "128") == []
    assert "no --tasks" in check("--eval_ppl", "--batch_size", "8")[0]


@pytest.mark.parametrize("argv, expected", [
    (["--eval_ppl", "--wbits", "4", "--only_quant_kv"], "--only_quant_kv needs quantized activations"),
    (["--eval_ppl", "--a_dynamic"], "--a_dynamic needs quantized activations"),
    (["--eval_ppl", "--wbits", "0"], "--wbits must be between 1 and 16"),
    (["--eval_ppl", "--reorder", "166"], "--reorder takes distinct digits 1-5"),
    (["--eval_ppl", "--ppl_datasets", "wikitext2,lambada"], "--ppl_datasets: unknown lambada"),
    (["--wbits", "4"], "nothing to evaluate"),
    (["--tasks", ","], "--tasks: no task names given"),
    (["--tasks", "piqa", "--num_fewshot", "-1"], "--num_fewshot must not be negative"),
    (["--eval_ppl", "--limit", "0"], "--limit must be at least 1"),
    (["--eval_ppl", "--device_map", "auto", "--max_memory", "0=70G"], "'70G' for 0 is not a size such as 70GiB"),
    (["--eval_ppl", "--device_map", "auto", "--max_memory", "gpu0=1GiB"], "unknown device 'gpu0'"),
    (["--eval_ppl", "--device_map", "auto", "--max_memory", "disk=1GiB"], "disk takes no budget"),
    (["--eval_ppl", "--device_map", "auto", "--max_memory", "0=1GiB,cuda:0=2GiB"], "cuda:0 is given twice"),
    (["--eval_ppl", "--device_map", "auto", "--max_memory", "cpu=0MiB"], "cpu gets no memory"),
    (["--eval_ppl", "--device_map", "auto", "--max_memory", "cpu"], "'cpu' is not DEVICE=SIZE"),
    (["--eval_ppl", "--offload_folder", __file__], "is a file, not a folder"),
    (["--wbits", "4", "--save", "out", "--offload_folder", "off"], "--save needs the quantized layers in memory"),
])
def test_contradictions_and_bad_values_are_refused(argv, expected):
    with pytest.raises(UsageError, match=expected.replace("(", r"\(")):
        check(*argv)


def test_arguments_become_the_pipeline_settings():
    args = config.build_parser().parse_args(["opt-125m", "--wbits", "3", "--abits", "4", "--reorder", "15",
                                             "--R5_clusters", "8", "--bit_mode", "strict", "--eval_ppl"])
    cfg = config.rptq_config(args, "cpu")
    assert (cfg.label, cfg.reorder, cfg.clusters["R5"], cfg.site_bits("norm"), cfg.prob_bits) == ("W3A4", "15", 8,
                                                                                                  4, 4)
    assert cfg.describe()["clusters"] == {"R1": 32, "R2": 1, "R3": 1, "R4": 1, "R5": 8}
    assert cfg.mode_line() == "(paper grid, gptq weights per cluster, strict activation bits, ema_minmax ranges, " \
                              "reorder 15)"
    assert config.runs_rptq(args) and not config.runs_rptq(config.build_parser().parse_args(["m", "--eval_ppl"]))


def test_reference_bits_keep_norms_and_probabilities_at_8():
    cfg = config.RPTQConfig(wbits=4, abits=4)
    assert (cfg.site_bits("norm"), cfg.site_bits("act"), cfg.site_bits("kv"), cfg.prob_bits) == (8, 4, 4, 8)
    kv = config.RPTQConfig(wbits=4, abits=3, only_quant_kv=True)
    assert (kv.site_bits("norm"), kv.site_bits("kv"), kv.prob_bits, kv.label) == (None, 3, None, "W4A3KV")


def test_run_data_names_files_inside_the_folder(data_dir):
    args = config.build_parser().parse_args(["m", "--eval_ppl", "--ppl_datasets", "ptb", "--data_dir",
                                             str(data_dir)])
    assert config.run_data(args) == [{"set": "ptb", "purpose": "eval", "file": "ptb/ptb.valid.txt",
                                      "sha256": config.run_data(args)[0]["sha256"]}]
    other = [{**config.run_data(args)[0], "sha256": "0" * 64}]
    assert "ptb eval ptb/ptb.valid.txt" in config.data_difference(other, config.run_data(args))


def test_a_saved_model_refuses_every_quantization_and_calibration_flag_but_seqlen():
    """SAVED_FLAGS must follow the parser: a new quantization flag left out of it would be silently ignored."""
    parser = config.build_parser()
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    assert set(config.SAVED_FLAGS) == (groups["quantization"] | groups["calibration"]) - {"seqlen"}


def test_max_memory_becomes_accelerate_budgets_in_bytes():
    args = config.build_parser().parse_args(["m", "--eval_ppl", "--device_map", "balanced", "--max_memory",
                                             "0=70GiB, cuda:1=1.5GB,CPU=200gib"])
    assert config.max_memory(args) == {0: 70 * 2 ** 30, 1: 1_500_000_000, "cpu": 200 * 2 ** 30}
    args.max_memory = "cpu=512mb"  # B is bytes in any case (accelerate would read 512 megabits)
    assert config.max_memory(args) == {"cpu": 512_000_000}
    args.max_memory = None
    assert config.max_memory(args) is None


def test_placement_flags_that_change_nothing_get_a_note():
    assert check("--eval_ppl", "--max_memory", "cpu=1GiB") == [
        "--max_memory changes nothing in this run (--wbits 16 --abits 16, no --device_map): ignored"]
    assert check("--eval_ppl", "--offload_folder", "off") == [
        "--offload_folder changes nothing in this run (--wbits 16 --abits 16, no --device_map): ignored"]
    assert check("--eval_ppl", "--wbits", "4", "--offload_folder", "off") == []  # quantized layers go there
    assert check("--eval_ppl", "--device_map", "auto", "--offload_folder", "off", "--max_memory", "cpu=1GiB") == []
