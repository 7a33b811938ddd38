from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def sample_data_root() -> Path | None:
    """The shared real-data samples (``../shared/data`` or ``$FFTPROMPT_SAMPLE_DATA``), or None when absent."""
    env = os.environ.get("FFTPROMPT_SAMPLE_DATA")
    root = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture
def sample_data() -> Path:
    root = sample_data_root()
    if root is None:
        pytest.skip("real sample data not found (../shared/data or FFTPROMPT_SAMPLE_DATA)")
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
