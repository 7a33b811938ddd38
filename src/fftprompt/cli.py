"""Console entry points ``fftprompt-train``, ``fftprompt-eval``, ``fftprompt-pretrain`` and ``fftprompt-explain``: thin
``@hydra.main`` shims over ``fftprompt.run`` and ``fftprompt.explain``.

The configs ship inside the package (``fftprompt/configs``), so both commands work from any directory; runs are
written under ``./runs/`` of the directory they are started in. Examples::

    fftprompt-train                                         # generated symmetry benchmark, small demo ViT, CPU
    fftprompt-train data=dtd data.root=/data/dtd backbone=vit_base backbone.pretrained=true
    fftprompt-train experiment=kvasir_seg data.root=/data/kvasir trainer=gpu
    fftprompt-train paths.output_dir=runs/demo ckpt_path=last      # resume an interrupted run
    fftprompt-eval adapter_path=runs/demo                   # same overrides as the training run
    fftprompt-train --cfg job                               # print the composed config
    fftprompt-explain run_dir=runs/demo images=test:8       # figures + explain.md in runs/demo/explain
    fftprompt-pretrain paths.output_dir=runs/pretrain       # fractal-pretrained demo ViT + model card

Errors caused by the input (a bad data root or layout, a bad config value, a run directory that would be
overwritten, a checkpoint that cannot be loaded safely) are printed as one ``error: <message>`` line on stderr with
exit status 2, a diverged run (NaN/Inf loss) with exit status 1; ``HYDRA_FULL_ERROR=1`` shows the full traceback
instead. A run stopped by SIGTERM (after Lightning finishes the current batch) exits with status 143, not 0.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from fftprompt.weights import RESOLVER, weights_path

__all__ = ["eval_main", "explain_main", "pretrain_main", "train_main"]

# exceptions whose message is meant for the user: fftprompt raises them for bad input and refused operations
_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)
# ${fftprompt.weights:<file>} (the shipped backbone weights) resolves before fftprompt.run is imported, e.g. for --cfg
OmegaConf.register_new_resolver(RESOLVER, weights_path, replace=True)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def train_main(cfg: DictConfig) -> float | None:
    """``fftprompt-train``: returns the monitored test metric (for Hydra sweepers)."""
    from fftprompt.run import train

    metrics, _ = _reporting_errors(train, cfg)
    return metrics.get(str(cfg.task.monitor).replace("val/", "test/", 1))


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    """``fftprompt-eval``: tests a finished run's weights (``adapter_path=`` or ``ckpt_path=``)."""
    from fftprompt.run import evaluate

    _reporting_errors(evaluate, cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="pretrain")
def pretrain_main(cfg: DictConfig) -> None:
    """``fftprompt-pretrain``: formula-driven pretraining of a ViT; writes its weights and model card."""
    from fftprompt.run import pretrain

    _reporting_errors(pretrain, cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="explain")
def explain_main(cfg: DictConfig) -> None:
    """``fftprompt-explain``: rollout, prompt attention and frequency attributions of a finished run (``run_dir=``)."""
    from fftprompt.explain import explain

    written = _reporting_errors(lambda c: explain(**OmegaConf.to_container(c, resolve=True)), cfg)
    print(f"explanations: {written['markdown']}")


def _reporting_errors(function: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Calls ``function(cfg)``; input errors become ``error: <message>`` on stderr and exit status 2 (1: diverged)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fftprompt.lit import NonFiniteLossError

    try:
        return function(cfg)
    except SIGTERMException:  # a SystemExit without a code: the shell would see status 0
        print("error: stopped by SIGTERM; resume with ckpt_path=last", file=sys.stderr, flush=True)
        sys.exit(128 + 15)
    except (*_INPUT_ERRORS, InstantiationException, NonFiniteLossError) as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {_user_message(error)}", file=sys.stderr, flush=True)
        sys.exit(1 if isinstance(error, NonFiniteLossError) else 2)


def _user_message(error: BaseException) -> str:
    """The message of ``error`` without the wrapping that Hydra's instantiate and DataLoader workers add."""
    message = str(error).strip()
    if isinstance(error, InstantiationException):
        target = re.search(r"target '([^']+)'", message)
        key = re.search(r"full_key: (\S+)", message)
        where = ", ".join(part for part in (key and f"config entry {key.group(1)}", target and target.group(1)) if part)
        cause = error.__cause__
        if cause is not None and str(cause).strip():
            return f"{_user_message(cause)} ({where})" if where else _user_message(cause)
        return message.replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "")
    if "\nOriginal Traceback" in message:  # re-raised from a DataLoader worker: keep the original error's last line
        last = message.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if re.match(r"^\w+(Error|Exception): ", last) else last
    return message


if __name__ == "__main__":
    train_main()
