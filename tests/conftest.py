import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own empty artifact cache and the smoke budget, and starts from the same seed."""
    monkeypatch.setenv("LDM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LDM_BUDGET", "smoke")
    torch.manual_seed(0)
