import time

from models.hub import hub_offline, hub_reachable


def test_offline_switches_are_read_from_the_environment(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert not hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", " True ")
    assert hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub_offline()


def test_an_unreachable_endpoint_is_known_at_once(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens here
    start = time.monotonic()
    assert not hub_reachable(timeout=2)
    assert time.monotonic() - start < 3
