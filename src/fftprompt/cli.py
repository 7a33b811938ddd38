"""Console entry points ``fftprompt-train`` and ``fftprompt-eval``: thin ``@hydra.main`` shims over ``fftprompt.run``.

The configs ship inside the package (``fftprompt/configs``), so both commands work from any directory; runs are
written under ``./runs/`` of the directory they are started in. Examples::

    fftprompt-train                                         # generated symmetry benchmark, tiny random ViT, CPU
    fftprompt-train data=dtd data.root=/data/dtd backbone=vit_base backbone.pretrained=true
    fftprompt-train experiment=kvasir_seg data.root=/data/kvasir trainer=gpu
    fftprompt-train paths.output_dir=runs/demo ckpt_path=last      # resume an interrupted run
    fftprompt-eval adapter_path=runs/demo                   # same overrides as the training run
    fftprompt-train --cfg job                               # print the composed config
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

__all__ = ["eval_main", "train_main"]


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """``fftprompt-train``: returns the monitored test metric (for Hydra sweepers)."""
    from fftprompt.run import train

    metrics, _ = train(cfg)
    return metrics.get(str(cfg.task.monitor).replace("val/", "test/", 1))


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    """``fftprompt-eval``: tests a finished run's weights (``adapter_path=`` or ``ckpt_path=``)."""
    from fftprompt.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    train_main()
