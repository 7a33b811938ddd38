"""The run directory's names and the lists of config entries that define a run, in one room.

A leaf module (no imports): every module that writes or reads a run directory takes its file and folder names from
here, and every rule about "which config entries make two runs the same" names its entries here, side by side, so
their differences can be read in one place. What the files hold and who writes them: :mod:`fftprompt.rundir`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CHECKPOINT_DIR",
    "EXPLAIN_DIR",
    "EXPLAIN_REPORT",
    "EXPORTED_PROGRAM_FILE",
    "EXPORT_DIR",
    "EXPORT_INFO",
    "FIGURE_DIR",
    "HYDRA_CONFIG",
    "LAST_CHECKPOINT",
    "LAUNCHES",
    "LOG_FILE",
    "MASK_DIR",
    "METRICS_FILE",
    "MODEL_KEYS",
    "NOT_GROUPED",
    "OVERLAY_FIGURE",
    "ONNX_FILE",
    "PEFT_BASE",
    "PEFT_CONFIG",
    "PEFT_WEIGHTS",
    "PREDICTIONS_FILE",
    "PREDICT_DIR",
    "PREDICT_SUMMARY",
    "PROBE_TABLE",
    "REPLACED_MARK",
    "REPORT_FILE",
    "RESUME_COMPARED",
    "RESUME_MAY_CHANGE",
    "RESUME_MAY_GROW",
    "RUN_CONFIG",
    "RUN_ENTRIES",
    "TIMM_CONFIG",
    "TIMM_WEIGHTS",
    "TORCHSCRIPT_FILE",
    "covering",
]

# -- names in a run directory --------------------------------------------------------------------------------------

# fftprompt-train (and fftprompt-eval, whose output folder is laid out alike)
RUN_CONFIG = "config.yaml"  # the resolved config of the run
METRICS_FILE = "metrics.json"  # test metrics, parameter counts, timings; its presence marks a finished run
REPORT_FILE = "report.md"
FIGURE_DIR = "figures"  # report.md's PNG figures
ADAPTER_WEIGHTS = "adapter.safetensors"  # the trained tensors (prompt, adapter, head)
ADAPTER_CONFIG = "adapter.json"  # what rebuilds the model around them
CHECKPOINT_DIR = "checkpoints"  # Lightning checkpoints; their presence without metrics marks an unfinished run
LAST_CHECKPOINT = "last.ckpt"  # in CHECKPOINT_DIR: what ckpt_path=last resumes
LAUNCHES = "launches.yaml"  # one entry per command that trained or evaluated here
LOG_FILE = "cli.log"  # Hydra's job log (job name cli), created at its first line
HYDRA_CONFIG = ".hydra/config.yaml"  # what older Hydra versions left in a started job
# overwrite=true moves an earlier run to <run>.replaced-<date>-<time> next to it
REPLACED_MARK = ".replaced-"

# fftprompt-explain (RUN/explain; report.md's explanation figures go to figures/explain)
EXPLAIN_DIR = "explain"
EXPLAIN_REPORT = "explain.md"

# fftprompt-predict (RUN/predict unless out_dir= says otherwise)
PREDICT_DIR = "predict"
PREDICTIONS_FILE = "predictions.csv"  # classification: one row per image
MASK_DIR = "masks"  # segmentation: one PNG per image
OVERLAY_FIGURE = "overlays.png"
PREDICT_SUMMARY = "predict.json"

# fftprompt-probe (its out_dir: metrics.json as above, and the table)
PROBE_TABLE = "probe.md"

# fftprompt-export (RUN/export/<format> unless out_dir= says otherwise); the timm and PEFT names are those libraries'
EXPORT_DIR = "export"
EXPORT_INFO = "export.json"
TIMM_WEIGHTS, TIMM_CONFIG = "model.safetensors", "config.json"
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"
PEFT_BASE = "base_model.safetensors"  # the frozen base weights, for runs not on timm's pretrained weights
TORCHSCRIPT_FILE = "model.torchscript.pt"
ONNX_FILE = "model.onnx"
EXPORTED_PROGRAM_FILE = "model.pt2"

# -- which config entries define a run -----------------------------------------------------------------------------
# Each list names config entries (dotted keys); an entry stands for everything below it (see covering). They answer
# four different questions, from the narrowest set of entries to the widest:

# What is the model: evaluation, prediction and export must use the run's own values of these (a difference is
# refused by rundir.check_matches_run; the seed joins them when the backbone is randomly initialised). Narrower than
# RUN_ENTRIES: the data and the training augmentation do not change which weights fit the model.
MODEL_KEYS = ("backbone", "features", "prompt", "adapter", "task.name", "task.pooling", "task.head")

# What fftprompt-eval takes from the evaluated run's config.yaml (overrides below them still apply): the model,
# the data it was tested on (and the augment group, whose preprocessing filter is part of the model's input), the
# seed. Wider than MODEL_KEYS; the trainer, the optimiser and the outputs are the evaluation's own.
RUN_ENTRIES = ("backbone", "features", "prompt", "adapter", "augment", "task", "data", "seed")

# What may differ when a run is resumed (ckpt_path=...): the whole config is compared with the run's, except these
# entries: what to resume, where the run lives, what is reported and logged, progress output, callbacks other than
# checkpointing and early stopping (profilers, timers, a test's killer), and how many loader processes read the same
# data. Everything else (data, model, task and optimiser, seed, the trainer's schedule, precision and devices, which
# checkpoint is kept, when training stops) changes what the resumed run trains. The most specific entry of
# RESUME_MAY_CHANGE and RESUME_COMPARED that covers a key decides; RESUME_MAY_GROW may only grow (to extend a run;
# -1 or null: no limit). The complement of this list is the widest notion of "the same run".
RESUME_MAY_CHANGE = (
    "ckpt_path",
    "overwrite",
    "paths",
    "report",
    "test",
    "logger",
    "callbacks",
    "callbacks.model_checkpoint.dirpath",
    "trainer.default_root_dir",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.pin_memory",
)
RESUME_COMPARED = ("callbacks.model_checkpoint", "callbacks.early_stopping")
RESUME_MAY_GROW = ("trainer.max_epochs", "trainer.max_steps")

# What never separates runs in fftprompt-compare's table: the seed is aggregated over (mean ± std), the rest locate
# or describe a run, not what it trains. Unlike RESUME_MAY_CHANGE the seed belongs here and logging does not: two
# runs that differ only in their logger are still compared as two settings.
NOT_GROUPED = ("seed", "overwrite", "ckpt_path", "paths", "report", "test")


def covering(key: str, entries: Sequence[str]) -> list[str]:
    """The entries of ``entries`` that name ``key`` or a mapping above it (``"paths"`` covers ``"paths.data_dir"``)."""
    return [entry for entry in entries if key == entry or key.startswith(f"{entry}.")]
