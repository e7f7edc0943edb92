"""Shared fixtures: every test writes its networks and measures into a fresh cache."""
import pytest
import torch


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLATLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FLATLIB_EXECUTOR", raising=False)  # tests choose their executor themselves
    return tmp_path / "cache"


@pytest.fixture(autouse=True)
def _threads():
    # Two threads, as on CI, so determinism is tested as it will be run.
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)
