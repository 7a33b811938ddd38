"""Console entry points ``fftprompt-train``, ``-eval``, ``-explain``, ``-predict`` and ``-export``: thin ``@hydra.main``
shims over ``fftprompt.run``, ``fftprompt.explain``, ``fftprompt.predict`` and ``fftprompt.export``.

The configs ship inside the package (``fftprompt/configs``), so both commands work from any directory; runs are
written under ``./runs/`` of the directory they are started in. Examples::

    fftprompt-train                                         # generated symmetry benchmark, tiny random ViT, CPU
    fftprompt-train data=dtd data.root=/data/dtd backbone=vit_base backbone.pretrained=true
    fftprompt-train experiment=kvasir_seg data.root=/data/kvasir trainer=gpu
    fftprompt-train paths.output_dir=runs/demo ckpt_path=last      # resume an interrupted run
    fftprompt-eval adapter_path=runs/demo                   # same overrides as the training run
    fftprompt-train --cfg job                               # print the composed config
    fftprompt-explain run_dir=runs/demo images=test:8       # figures + explain.md in runs/demo/explain
    fftprompt-predict run_dir=runs/demo images=photos/      # predictions.csv (or masks) in runs/demo/predict
    fftprompt-export run_dir=runs/demo format=torchscript   # runs/demo/export/torchscript/model.torchscript.pt
    fftprompt-train hparams_search=fourierft prompt=none    # Optuna search (needs the search extra)

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

__all__ = ["eval_main", "explain_main", "export_main", "predict_main", "train_main"]

# exceptions whose message is meant for the user: fftprompt raises them for bad input and refused operations
_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)


def train_main() -> None:
    """``fftprompt-train``; a search (``hparams_search=...``) without its optional sweeper stops with an error line."""
    from fftprompt.run import check_sweeper

    _reporting_errors(check_sweeper, sys.argv[1:])
    _train_app()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    """Trains; returns what a Hydra sweeper optimises (:func:`fftprompt.run.optimized_metric`)."""
    from fftprompt.run import optimized_metric, train

    metrics, _ = _reporting_errors(train, cfg)
    return _reporting_errors(lambda c: optimized_metric(c, metrics), cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def eval_main(cfg: DictConfig) -> None:
    """``fftprompt-eval``: tests a finished run's weights (``adapter_path=`` or ``ckpt_path=``)."""
    from fftprompt.run import evaluate

    _reporting_errors(evaluate, cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="explain")
def explain_main(cfg: DictConfig) -> None:
    """``fftprompt-explain``: rollout, prompt attention and frequency attributions of a finished run (``run_dir=``)."""
    from fftprompt.explain import explain

    written = _reporting_errors(lambda c: explain(**OmegaConf.to_container(c, resolve=True)), cfg)
    print(f"explanations: {written['markdown']}")


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def predict_main(cfg: DictConfig) -> None:
    """``fftprompt-predict``: a finished run's predictions on image files (``run_dir=``, ``images=``)."""
    from fftprompt.predict import predict

    written = _reporting_errors(lambda c: predict(**OmegaConf.to_container(c, resolve=True)), cfg)
    result = written.get("predictions") or written.get("masks")
    skipped = f" ({written['skipped']} unreadable files skipped)" if written["skipped"] else ""
    print(f"predicted {written['predicted']} images{skipped}: {result}")


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def export_main(cfg: DictConfig) -> None:
    """``fftprompt-export``: a finished run as a timm, PEFT or TorchScript model (``run_dir=``, ``format=``)."""
    from fftprompt.export import export

    written = _reporting_errors(lambda c: export(**OmegaConf.to_container(c, resolve=True)), cfg)
    print("exported: " + ", ".join(str(path) for path in written.values()))


def _reporting_errors(function: Callable[[Any], Any], cfg: Any) -> Any:
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
