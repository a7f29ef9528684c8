import json

from scripts import bos_windows


def test_bos_first_changes_only_the_windows_that_lacked_it(tiny_opt_dir, data_dir, tmp_path):
    out = tmp_path / "bos.json"
    assert bos_windows.main([str(tiny_opt_dir), "--limit", "3", "--seqlen", "64", "--device", "cpu",
                             "--data_dir", str(data_dir), "--cache_dir", str(tmp_path), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    protocol, bos_first = result["ppl"]["protocol"]["nlls"], result["ppl"]["BOS first"]["nlls"]
    # the same tokens scored; only windows that did not already start with BOS change
    assert (protocol[0] == bos_first[0]) == result["protocol_first_window_starts_with_bos"]
    assert all(a != b for a, b in zip(protocol[1:], bos_first[1:]))


def test_one_window_is_one_line(capsys):
    assert bos_windows.main(["smollm2-135m", "--limit", "1"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
