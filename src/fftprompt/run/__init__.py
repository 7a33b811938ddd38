"""``train(cfg)`` and ``evaluate(cfg)``: build everything from a composed Hydra config, fit/test, write a run directory.

These are plain functions (the ``@hydra.main`` shims in :mod:`fftprompt.cli` only call them), so tests, notebooks and
``fftprompt-ablate`` compose a config with :func:`compose` and call them directly. What a run directory holds, and
every check on it, belongs to :mod:`fftprompt.rundir`; the report is assembled by :mod:`fftprompt.run_report`.

Modules: :mod:`~fftprompt.run.config` (composition, the evaluation config, values read from a config),
:mod:`~fftprompt.run.core` (build, train, evaluate), :mod:`~fftprompt.run.trainer` (the Lightning Trainer, its
callbacks and loggers, what its fit and test give back), :mod:`~fftprompt.run.records` (launch record, summary,
report), :mod:`~fftprompt.run.pretraining` (pretrain). Importing the package registers the
``${fftprompt.weights:<file>}`` resolver.
"""

from fftprompt.overrides import check_sweeper, eval_overrides
from fftprompt.run.config import CONFIG_DIR, compose, eval_config, optimized_metric
from fftprompt.run.core import build, build_backbone, evaluate, train
from fftprompt.run.pretraining import pretrain

__all__ = [
    "CONFIG_DIR",
    "build",
    "build_backbone",
    "check_sweeper",
    "compose",
    "eval_config",
    "eval_overrides",
    "evaluate",
    "optimized_metric",
    "pretrain",
    "train",
]
