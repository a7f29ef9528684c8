"""Whether the Hugging Face hub can be used: clients retry for minutes when it cannot, so callers ask first."""
import os
import socket
import urllib.parse


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
