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


# a 2-block ViT (patch 8, width 32, randomly initialised: configs/backbone/vit_micro.yaml) with small prompts and
# adapter: the tiny model of every run test
TINY_MODEL = [
    "backbone=vit_micro",
    "prompt.num_tokens=2",
    "prompt.hidden_dim=16",
    "prompt.num_heads=2",
    "prompt.spectrum_dim=8",
    "adapter.n_frequency=50",
]
# no progress bar or model summary, no frequency panels or explanations in the report
QUIET = [
    "~callbacks.rich_progress_bar",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "report.frequency_panels=0",
    "report.explain_images=0",
]
# a few generated symmetry-benchmark images of 32 px
TINY_SYMMETRY = ["data.image_size=32", "data.num_train=16", "data.num_val=8", "data.num_test=12", "data.batch_size=8"]


def tiny_config(output_dir: Path, *overrides: str, data: list[str] = TINY_SYMMETRY, name: str = "train"):
    """The packaged config ``name`` with the tiny model, quiet settings, ``data`` and ``overrides``."""
    from fftprompt.run import compose

    return compose([*TINY_MODEL, *QUIET, *data, f"paths.output_dir={output_dir}", *overrides], config_name=name)


def eval_test_logits(config, monkeypatch) -> tuple[dict, torch.Tensor]:
    """``fftprompt.run.evaluate(config)``'s metrics and the test logits it computed, batch after batch, in order."""
    from fftprompt.lit import ClassificationModule
    from fftprompt.run import evaluate

    recorded: list[torch.Tensor] = []
    step = ClassificationModule._step

    def recording_step(self, batch, split):
        loss, logits = step(self, batch, split)
        if split == "test":
            recorded.append(logits.detach().float())
        return loss, logits

    monkeypatch.setattr(ClassificationModule, "_step", recording_step)
    metrics = evaluate(config)
    monkeypatch.setattr(ClassificationModule, "_step", step)
    return metrics, torch.cat(recorded)
