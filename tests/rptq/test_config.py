"""rptq/config.py: each setting declared once; which values and combinations are refused, which only get a note,
and what the settings become (label, describe(), the pipeline's bits)."""
import dataclasses

import pytest

from rptq import config
from rptq.cli import build_parser, given_flags, render
from rptq.config import ConfigError, QuantConfig, RunConfig


def check(*argv, model="opt-125m"):
    """The notes main.py would print for this command line, as it prints them (flags named)."""
    cfg = RunConfig(**vars(build_parser().parse_args([model, *argv])))
    return [render(note) for note in config.check(cfg, given_flags(argv))]


def test_a_flag_idle_in_one_setting_of_a_shell_sweep_is_a_note():
    """The authors' scripts pass --nsamples 128 to every setting, the float one too."""
    notes = check("--eval_ppl", "--nsamples", "128", "--metric=minmax")
    assert notes == ["--metric changes nothing in this run (--wbits 16 --abits 16): ignored",
                     "--nsamples changes nothing in this run (--wbits 16 --abits 16): ignored"]
    assert check("--eval_ppl", "--wbits", "4", "--abits", "4", "--nsamples", "128") == []
    assert "no --tasks" in check("--eval_ppl", "--batch_size", "8")[0]


@pytest.mark.parametrize("argv, expected", [
    (["--eval_ppl", "--wbits", "4", "--only_quant_kv"], "--only_quant_kv needs quantized activations"),
    (["--eval_ppl", "--a_dynamic"], "--a_dynamic needs quantized activations"),
    (["--eval_ppl", "--wbits", "0"], "--wbits must be between 1 and 16"),
    (["--eval_ppl", "--reorder", "166"], "--reorder takes distinct digits 1-5"),
    (["--eval_ppl", "--ppl_datasets", "wikitext2,lambada"], "--ppl_datasets unknown lambada"),
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
    (["--wbits", "4", "--save", "out", "--offload_folder", "off"], "--save needs the quantized layers in memory"),
])
def test_contradictions_and_bad_values_are_refused(argv, expected):
    with pytest.raises(ConfigError) as e:
        check(*argv)
    assert expected in render(e.value)


def test_the_library_names_settings_and_the_command_line_names_flags():
    """The error carries what was wrong as data; only the command line turns it into a flag."""
    with pytest.raises(ConfigError) as e:
        config.check(RunConfig(model="m", wbits=0, eval_ppl=True))
    assert (e.value.option, e.value.message.data["value"]) == ("wbits", 0)
    assert str(e.value).startswith("wbits must be between 1 and 16")
    assert render(e.value).startswith("--wbits must be between 1 and 16")


def test_settings_become_the_pipeline_settings():
    cfg = RunConfig(model="opt-125m", wbits=3, abits=4, reorder="15", R5_clusters=8, bit_mode="strict",
                    eval_ppl=True)
    assert (cfg.label, cfg.points, cfg.point_clusters("R5"), cfg.site_bits("norm"), cfg.prob_bits) == (
        "W3A4", "15", 8, 4, 4)
    assert cfg.describe()["clusters"] == {"R1": 32, "R2": 1, "R3": 1, "R4": 1, "R5": 8}
    assert cfg.mode_line() == "(paper grid, gptq weights per cluster, strict activation bits, ema_minmax ranges, " \
                              "reorder 15 (stable order))"
    assert cfg.quantizes and not RunConfig(model="m", eval_ppl=True).quantizes
    assert QuantConfig.from_description(cfg.describe()).describe() == cfg.describe()  # a saved model's settings


def test_reference_bits_keep_norms_and_probabilities_at_8():
    cfg = QuantConfig(wbits=4, abits=4)
    assert (cfg.site_bits("norm"), cfg.site_bits("act"), cfg.site_bits("kv"), cfg.prob_bits) == (8, 4, 4, 8)
    kv = QuantConfig(wbits=4, abits=3, only_quant_kv=True)
    assert (kv.site_bits("norm"), kv.site_bits("kv"), kv.prob_bits, kv.label) == (None, 3, None, "W4A3KV")


def test_one_set_of_defaults_the_float_model():
    """The library and the command line share the defaults: a bare run is the float model (W16A16)."""
    args = vars(build_parser().parse_args(["m"]))
    assert args == {**config.defaults(), "model": "m"}
    assert QuantConfig().label == "W16A16"


def test_every_setting_is_declared_once_with_help_a_group_and_its_flag():
    """Adding a setting is one field: the parser, the checks and the saved-model refusals follow it."""
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    declared = config.options(RunConfig)
    assert set(flags) == {name for name, _, _ in declared}
    for name, opt, _ in declared:
        assert opt.help and opt.group in config.GROUPS, name
    saved = {name for name, opt, _ in declared if opt.saved}
    assert saved == {f.name for f in dataclasses.fields(QuantConfig)} | {"nsamples", "seed", "calib_dataset"}


def test_a_saved_model_refuses_every_setting_that_would_quantize_it_again():
    with pytest.raises(ConfigError) as e:
        config.check(RunConfig(model="saved", eval_ppl=True, R2_clusters=8, metric="minmax"), saved_label="W4A4")
    assert render(e.value) == ("saved is a saved W4A4 model: --metric, --R2_clusters would quantize it again; drop "
                               "them (the saved settings apply)")
    assert config.check(RunConfig(model="saved", eval_ppl=True, seqlen=512), saved_label="W4A4") == []


def test_max_memory_becomes_accelerate_budgets_in_bytes():
    cfg = RunConfig(model="m", max_memory="0=70GiB, cuda:1=1.5GB,CPU=200gib")
    assert cfg.budgets() == {0: 70 * 2 ** 30, 1: 1_500_000_000, "cpu": 200 * 2 ** 30}
    assert RunConfig(model="m", max_memory="cpu=512mb").budgets() == {"cpu": 512_000_000}  # B is bytes in any case
    assert RunConfig(model="m").budgets() is None


def test_placement_flags_that_change_nothing_get_a_note():
    assert check("--eval_ppl", "--max_memory", "cpu=1GiB") == [
        "--max_memory changes nothing in this run (--wbits 16 --abits 16, no --device_map): ignored"]
    assert check("--eval_ppl", "--offload_folder", "off") == [
        "--offload_folder changes nothing in this run (--wbits 16 --abits 16, no --device_map): ignored"]
    assert check("--eval_ppl", "--wbits", "4", "--offload_folder", "off") == []  # quantized layers go there
    assert check("--eval_ppl", "--device_map", "auto", "--offload_folder", "off", "--max_memory", "cpu=1GiB") == []


def test_library_notes_count_settings_that_differ_from_their_defaults():
    notes = config.check(RunConfig(model="m", eval_ppl=True, nsamples=64))
    assert [str(n) for n in notes] == ["nsamples changes nothing in this run (wbits 16 abits 16): ignored"]


def test_the_order_inside_clusters_follows_the_bit_mode_unless_given():
    assert (QuantConfig().order, QuantConfig(bit_mode="strict").order) == ("reference", "stable")
    assert QuantConfig(cluster_order="stable").order == "stable"  # how rows made before it existed reproduce
    assert QuantConfig(wbits=4).describe()["cluster_order"] == "reference"
    assert check("--eval_ppl", "--wbits", "4", "--cluster_order", "stable") == []  # GPTQ walks clusters in it
    assert check("--eval_ppl", "--cluster_order", "stable") == [
        "--cluster_order changes nothing in this run (--wbits 16 --abits 16): ignored"]
    assert check("--eval_ppl", "--wbits", "4", "--a_granularity", "fixed", "--cluster_order", "stable")[0].startswith(
        "--cluster_order changes nothing")  # no K-means, no order
    assert config.recorded_before("cluster_order") == "stable" and config.recorded_before("nsamples") == 128
