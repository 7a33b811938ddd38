"""Console entry points ``fftprompt-train``, ``-eval``, ``-explain``, ``-predict``, ``-export`` and ``-pretrain``:
thin ``@hydra.main`` shims over ``fftprompt.run``, ``fftprompt.explain``, ``fftprompt.predict`` and
``fftprompt.export``.

The configs ship inside the package (``fftprompt/configs``), so both commands work from any directory; runs are
written under ``./runs/`` of the directory they are started in. Examples::

    fftprompt-train                                         # generated symmetry benchmark, small demo ViT, CPU
    fftprompt-train data=dtd data.root=/data/dtd backbone=vit_base backbone.pretrained=true
    fftprompt-train experiment=kvasir_seg data.root=/data/kvasir trainer=gpu
    fftprompt-train paths.output_dir=runs/demo ckpt_path=last      # resume an interrupted run
    fftprompt-eval adapter_path=runs/demo                   # the run's model and data (its config.yaml)
    fftprompt-train --cfg job                               # print the composed config
    fftprompt-explain run_dir=runs/demo images=test:8       # figures + explain.md in runs/demo/explain
    fftprompt-predict run_dir=runs/demo images=photos/      # predictions.csv (or masks) in runs/demo/predict
    fftprompt-export run_dir=runs/demo format=torchscript   # runs/demo/export/torchscript/model.torchscript.pt
    fftprompt-train hparams_search=fourierft prompt=none    # Optuna search (needs the search extra)
    fftprompt-pretrain paths.output_dir=runs/pretrain       # fractal-pretrained demo ViT + model card
    fftprompt-probe data=dtd data.root=/data/dtd data.image_size=64   # linear/k-NN probes, metrics.json + probe.md

Errors caused by the input (a bad data root or layout, a bad config value, a run directory that would be
overwritten, a checkpoint that cannot be loaded safely) are printed as one ``error: <message>`` line on stderr with
exit status 2, a diverged run (NaN/Inf loss) with exit status 1; ``HYDRA_FULL_ERROR=1`` shows the full traceback
instead. A run stopped by SIGTERM (after Lightning finishes the current batch) exits with status 143, not 0. In a
sweep (``-m``) a failing job is reported and the next one runs; at the end the failures are listed and the exit
status is 2 (1 if a job diverged or failed unexpectedly).

``paths.output_dir=DIR`` also sets ``hydra.run.dir=DIR`` (unless given), so that Hydra's run directory, where the
log ``cli.log`` goes, is the run directory instead of a time-stamped folder beside it. A refused command (exit status
2) leaves nothing new behind: the folders Hydra made for it and the log lines it wrote are removed
(:class:`LeaveNoTrace`). Lightning's log lines go through Hydra's logging once (console and ``cli.log``), without its
advertising tips.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fftprompt.weights import RESOLVER, weights_path

__all__ = [
    "LeaveNoTrace",
    "eval_main",
    "explain_main",
    "export_main",
    "predict_main",
    "pretrain_main",
    "probe_main",
    "train_main",
]

# exceptions whose message is meant for the user: fftprompt raises them for bad input and refused operations
_INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError)
# ${fftprompt.weights:<file>} (the shipped backbone weights) resolves before fftprompt.run is imported, e.g. for --cfg
OmegaConf.register_new_resolver(RESOLVER, weights_path, replace=True)


@dataclass
class _Sweep:
    """The jobs of a Hydra multirun in this process (the basic launcher runs them one after another)."""

    jobs: int = 0
    failures: list[tuple[str, str, int]] = field(default_factory=list)  # (job and its swept values, message, status)


_SWEEP = _Sweep()


@dataclass
class _Made:
    """What Hydra is about to make for a single run: folders that did not exist, the sizes of the files already in
    the run directory (a refused command truncates a log it appended to, and deletes one it created)."""

    run_dir: Path | None = None
    new_dirs: list[Path] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)


_MADE = _Made()


class LeaveNoTrace(Callback):
    """Hydra callback (``hydra.callbacks`` in ``configs/hydra/default.yaml``): before Hydra creates a single run's
    directory, notes what exists, so that :func:`_remove_leftovers` can undo what a refused command made."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir)).absolute()
        _MADE.run_dir = run_dir
        _MADE.new_dirs = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
        _MADE.sizes = {p.name: p.stat().st_size for p in run_dir.iterdir() if p.is_file()} if run_dir.is_dir() else {}


def _remove_leftovers() -> None:
    """Undoes what a refused single run left: its log file (created, or lines appended) and the folders Hydra made."""
    run_dir = _MADE.run_dir
    if run_dir is None:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        path = Path(getattr(handler, "baseFilename", "/"))
        if isinstance(handler, logging.FileHandler) and path.parent == run_dir:
            root.removeHandler(handler)
            handler.close()
            if path.name in _MADE.sizes and path.is_file():
                os.truncate(path, _MADE.sizes[path.name])
            elif path.is_file():
                path.unlink()
    for folder in _MADE.new_dirs:  # deepest first; a folder that holds anything stays
        try:
            folder.rmdir()
        except OSError:
            break


class _NoTips(logging.Filter):
    """Drops Lightning's advertising (``💡 Tip: ... litlogger``, ``litmodels``) printed by every Trainer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _one_log_stream() -> None:
    """Lightning's records go through Hydra's handlers once: Lightning's own console handlers (which print every line
    a second time as ``INFO: ...``) are removed when Hydra's logging is set up, and its tips are dropped."""
    import lightning  # noqa: F401  (its import adds the handlers removed here)
    import lightning.pytorch  # noqa: F401

    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric"):
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
                logger.removeHandler(handler)
            logger.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def train_main() -> None:
    """``fftprompt-train``; a search (``hparams_search=...``) without its optional sweeper stops with an error line."""
    from fftprompt.overrides import check_sweeper

    try:  # before anything imports Lightning: it keeps its log lines from Hydra's cli.log if imported first
        check_sweeper(sys.argv[1:])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)
    _main(_train)


def eval_main() -> None:
    """``fftprompt-eval``: tests a finished run's weights (``adapter_path=`` or ``ckpt_path=``)."""
    from fftprompt.overrides import eval_overrides

    sys.argv = [sys.argv[0], *eval_overrides(sys.argv[1:])]
    _main(_eval)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def _train(cfg: DictConfig) -> float | None:
    """The training job: returns what a Hydra sweeper optimises (:func:`fftprompt.run.optimized_metric`; None when
    the job failed)."""
    from fftprompt.run import optimized_metric, train

    def job(job_cfg: DictConfig) -> float | None:
        metrics, _ = train(job_cfg)
        return optimized_metric(job_cfg, metrics)

    return _reporting_errors(job, cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def _eval(cfg: DictConfig) -> None:
    from fftprompt.run import eval_config, evaluate

    _reporting_errors(lambda c: evaluate(eval_config(c, list(HydraConfig.get().overrides.task))), cfg)


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


@hydra.main(version_base="1.3", config_path="configs", config_name="probe")
def probe_main(cfg: DictConfig) -> None:
    """``fftprompt-probe``: linear and k-NN probes on a backbone's or a run's tokens, FFT statistics, or both."""
    from fftprompt.probe.command import probe

    _reporting_errors(probe, cfg)


def _main(app: Callable[[], Any]) -> None:
    """Runs a ``@hydra.main`` app with the run directory following ``paths.output_dir``; after a sweep whose jobs
    failed, lists the failures and exits with status 2 (1 if one diverged or failed unexpectedly)."""
    sys.argv = _run_dir_follows_output_dir(sys.argv)
    app()
    if _SWEEP.failures:
        print(
            f"error: {len(_SWEEP.failures)} of {_SWEEP.jobs} jobs of the sweep failed (the others finished):",
            file=sys.stderr,
        )
        for job, message, _ in _SWEEP.failures:
            print(f"  {job}: {message.splitlines()[0] if message else ''}", file=sys.stderr, flush=True)
        sys.exit(2 if all(status == 2 for *_, status in _SWEEP.failures) else 1)


def _run_dir_follows_output_dir(argv: list[str]) -> list[str]:
    """``argv`` plus ``hydra.run.dir=DIR`` when a single run (not ``-m``) is given ``paths.output_dir=DIR`` and no
    ``hydra.run.dir``: Hydra's run directory (its log, ``cli.log``) is then the run directory."""
    if "-m" in argv or "--multirun" in argv:
        return argv
    output_dir = None
    for argument in argv[1:]:
        key, separator, value = argument.lstrip("+").partition("=")
        if separator and key == "hydra.run.dir":
            return argv
        if separator and key == "paths.output_dir":
            output_dir = value
    return argv if output_dir is None else [*argv, f"hydra.run.dir={output_dir}"]


def _reporting_errors(function: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Calls ``function(cfg)``; input errors become ``error: <message>`` on stderr and exit status 2 (1: diverged).

    In a sweep a failing job does not stop the others: its error is printed and recorded (:func:`_main` lists the
    failures at the end) and None is returned.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fftprompt.lit import NonFiniteLossError

    _one_log_stream()
    sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    job = _job_label() if sweep else ""
    if sweep:
        _SWEEP.jobs += 1
    try:
        return function(cfg)
    except SIGTERMException:  # a SystemExit without a code: the shell would see status 0
        stopped = f" at {job}; the later jobs of the sweep did not run" if sweep else ""
        print(f"error: stopped by SIGTERM{stopped}; resume with ckpt_path=last", file=sys.stderr, flush=True)
        sys.exit(128 + 15)
    except Exception as error:
        expected = isinstance(error, (*_INPUT_ERRORS, InstantiationException, NonFiniteLossError))
        full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
        if not sweep and (full_error or not expected):
            raise
        status = 2 if expected and not isinstance(error, NonFiniteLossError) else 1
        message = _user_message(error) if expected else f"{type(error).__name__}: {error}"
        if not sweep:
            print(f"error: {message}", file=sys.stderr, flush=True)
            if status == 2:
                _remove_leftovers()
            sys.exit(status)
        if full_error or not expected:
            traceback.print_exc()
        print(f"error: {job}: {message}", file=sys.stderr, flush=True)
        _SWEEP.failures.append((job, message, status))
        return None


def _job_label() -> str:
    """``job <number> (<the job's values of the swept keys>)`` for the current job of a sweep."""
    hydra_config = HydraConfig.get()
    parser = OverridesParser.create()
    arguments = [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]  # Hydra has parsed them already
    swept = {o.key_or_group for o in parser.parse_overrides(arguments) if o.is_sweep_override()}
    overrides = [str(o) for o in hydra_config.overrides.task]
    values = [o for o, p in zip(overrides, parser.parse_overrides(overrides), strict=True) if p.key_or_group in swept]
    return f"job {hydra_config.job.num} ({' '.join(values) or 'no swept values'})"


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
    # run the imported module's copy: Hydra instantiates LeaveNoTrace from fftprompt.cli, whose notes must be those read
    from fftprompt.cli import train_main as _imported_train_main

    _imported_train_main()
