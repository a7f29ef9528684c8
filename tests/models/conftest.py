"""Fixtures of the family tests: the real models shipped in PyPI packages beyond SmolLM2 (tests/conftest.py)."""
import importlib.util

import pytest


@pytest.fixture(scope="session")
def gemma3_270m():
    """The name of the real Gemma3-270m, whose chunk packages are installed (else the test skips)."""
    from models.packaged import packaged_models

    model = packaged_models()["gemma3-270m"]
    if any(importlib.util.find_spec(package) is None for package, _ in model.pieces):
        pytest.skip(f"the Gemma3-270m packages are not installed ({model.install})")
    return model.name
