"""Lightning modules that train the prompts, FourierFT deltas and head of a :class:`~fftprompt.model.PromptedViT`.

Both tasks share one base: the optimiser sees only trainable parameters, grouped as ``prompt``, ``adapter`` and
``head`` (each group may have its own learning rate and weight decay), under a per-step linear warm-up and cosine
schedule. Metrics are torchmetrics collections cloned per split, logged as ``<split>/<name>``.

Metric definitions (all accumulated over the whole split, never averaged over batches):

- classification: ``acc`` (micro accuracy), ``f1_macro`` (unweighted mean of per-class F1), ``auroc`` (macro
  one-vs-rest AUROC on softmax probabilities; for two classes it equals the binary AUROC).
- segmentation: ``miou`` (mean over classes, background included, of the dataset-level IoU from the pixel
  confusion matrix; classes absent from both prediction and target are left out, as in mmsegmentation) and
  ``dice`` (dataset-level Dice ``2|P and T| / (|P| + |T|)`` of the foreground classes, averaged over them; for a
  binary task it is the foreground Dice).

Checkpoints hold only what is not frozen: frozen parameters (the backbone's weights) come from timm or the seed, and
a fingerprint of them is stored so that loading onto a different backbone fails loudly.

Faults: a NaN/Inf training loss stops the run with :class:`NonFiniteLossError` before the optimiser step, and no
checkpoint holding non-finite tensors is ever written, so the last checkpoint on disk is the last good one.
:class:`AtomicCheckpointIO` writes each checkpoint to a temporary file next to its target and renames it into place.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)
from torchmetrics.segmentation import DiceScore

from fftprompt.head_probe import fit_head_probe
from fftprompt.model import PromptedViT, frozen_fingerprint
from fftprompt.utils import atomic_write, check_choice

__all__ = [
    "AtomicCheckpointIO",
    "ClassificationModule",
    "NonFiniteLossError",
    "SegmentationModule",
    "classification_metrics",
    "segmentation_metrics",
]

# The modules apply the batch augmentation in on_after_batch_transfer on purpose (the data modules hold none), so that
# a test on any dataloader (e.g. a corrupted one) gets the same preprocessing; Lightning warns about that on every fit.
warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer` in `LightningModule` but")

PARAM_GROUPS = ("prompt", "adapter", "head")
FINGERPRINT_KEY = "fftprompt_frozen_fingerprint"  # checkpoint entry: frozen_fingerprint of the backbone
CLASS_NAMES_KEY = "fftprompt_class_names"  # checkpoint entry: the model's class names, when known
_SCHEDULES = ("cosine", "constant")
HeadInit = Literal["random", "probe"]  # ClassificationModule: a fresh head, or one fitted as a linear probe (LP-FT)
# torch.compile modes; "reduce-overhead" replays CUDA graphs (static shapes), which removes the kernel-launch cost
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class BatchAugment(Protocol):
    """A batch augmentation of :mod:`fftprompt.augment`: ``augment(images, draw)`` transforms a training batch
    ``(B, C, H, W)`` with draws keyed by ``draw``; ``evaluation(images)`` preprocesses validation/test batches."""

    def __call__(self, images: Tensor, draw: tuple[int, ...]) -> Tensor: ...

    def evaluation(self, images: Tensor) -> Tensor: ...


class NonFiniteLossError(FloatingPointError):
    """The training loss (or a tensor about to be checkpointed) is NaN or infinite: the run stops.

    Raised before the optimiser step that would spread the NaN into the weights, and instead of writing a checkpoint
    with non-finite tensors, so the newest checkpoint on disk is the last good one (resume with ``ckpt_path=last``
    after lowering the learning rates).
    """


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a partly written checkpoint under its final name.

    Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in the
    system temporary directory; when that is another file system (a tmpfs ``/tmp``), the final move is a copy, and a
    crash during the copy leaves a truncated ``last.ckpt``. Here the checkpoint is written to a temporary file in
    the target's own directory, flushed to disk (``fsync``) and renamed over the target with ``os.replace``, which is
    atomic on POSIX and Windows: a reader (or a resumed run) sees the old file or the new one, never a mix. Remote
    paths (``s3://...``) keep Lightning's behaviour. Loading defaults to ``weights_only=True`` (no unpickling of
    arbitrary objects).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Writes ``checkpoint`` to ``path`` atomically (temporary file + fsync + rename)."""
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint got storage_options={storage_options!r}; it takes none"
            )

        def write(temporary: Path) -> None:
            with temporary.open("wb") as file:
                torch.save(checkpoint, file)

        atomic_write(path, write)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's loader with ``weights_only=True`` unless asked otherwise (plain tensors and containers only)."""
        kwargs = {} if map_location is None else {"map_location": map_location}
        return super().load_checkpoint(path, weights_only=True if weights_only is None else weights_only, **kwargs)


def classification_metrics(num_classes: int) -> MetricCollection:
    """The classification metrics ``acc``, ``f1_macro`` and ``auroc`` (see the module docstring)."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "auroc": MulticlassAUROC(num_classes, average="macro"),
        }
    )


def segmentation_metrics(num_classes: int) -> MetricCollection:
    """The segmentation metrics ``miou`` and ``dice`` (see the module docstring)."""
    return MetricCollection(
        {
            "miou": MulticlassJaccardIndex(num_classes, average="macro"),
            "dice": DiceScore(
                num_classes,
                include_background=False,
                average="macro",
                aggregation_level="global",
                input_format="index",
            ),
        }
    )


def soft_dice_loss(logits: Tensor, target: Tensor, include_background: bool = False, smooth: float = 1.0) -> Tensor:
    """``1 - mean_c Dice_c`` on softmax probabilities, each class's Dice pooled over the batch and pixels.

    Args:
        logits: (B, K, H, W) mask logits.
        target: (B, H, W) class indices.
        include_background: average over all K classes instead of classes 1..K-1.
        smooth: added to numerator and denominator; keeps classes absent from a batch at loss 0 when also unpredicted.

    Returns:
        Scalar loss.
    """
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    one_hot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    if not include_background and num_classes > 1:
        probs, one_hot = probs[:, 1:], one_hot[:, 1:]
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice.mean()


class _PromptTuningModule(L.LightningModule):
    """Shared optimisation, scheduling, logging and checkpoint logic; subclasses define loss and metrics."""

    def __init__(
        self,
        model: PromptedViT,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        prompt_lr: float | None = None,
        adapter_lr: float | None = None,
        head_lr: float | None = None,
        adapter_weight_decay: float | None = None,
        warmup_epochs: float = 0.0,
        warmup_steps: int | None = None,
        scheduler: Literal["cosine", "constant"] = "cosine",
        min_lr_ratio: float = 0.0,
        label_smoothing: float = 0.0,
        augment: BatchAugment | None = None,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (binary tasks use 2 classes), got {num_classes}")
        if scheduler not in _SCHEDULES:
            raise ValueError(f"scheduler must be one of {_SCHEDULES}, got {scheduler!r}")
        if warmup_steps is not None and warmup_epochs:
            raise ValueError(
                f"give warmup_epochs ({warmup_epochs}) or warmup_steps ({warmup_steps}), not both; set the other to "
                "0 / null"
            )
        if warmup_epochs < 0 or (warmup_steps is not None and warmup_steps < 0):
            raise ValueError(f"warm-up must be >= 0, got warmup_epochs={warmup_epochs}, warmup_steps={warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        rates = {"lr": lr, "prompt_lr": prompt_lr, "adapter_lr": adapter_lr, "head_lr": head_lr}
        rates |= {"weight_decay": weight_decay, "adapter_weight_decay": adapter_weight_decay}
        if isinstance(optimizer, partial):  # Hydra's _partial_ optimiser: its own lr and weight_decay
            rates |= {f"optimizer.{k}": optimizer.keywords.get(k) for k in ("lr", "weight_decay")}
        for name, value in rates.items():
            # torch checks only the optimiser's own lr, without naming the key; a negative group rate would train
            # by gradient ascent
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and math.isfinite(value) and value >= 0):
                raise ValueError(f"task.module.{name}={value!r}: expected a finite number >= 0")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={compile_mode!r}; expected null (eager) or one of {COMPILE_MODES}")
        self.model = model
        self.num_classes = num_classes
        self.compile_mode = compile_mode
        # the compiled forward is a function, not a submodule: the state dict and checkpoints stay the model's
        self._compiled_forward: Callable[[Tensor], Tensor] | None = (
            None
            if compile_mode is None
            else torch.compile(model.forward, mode=compile_mode, backend=compile_backend, dynamic=False)
        )
        self.optimizer_factory = optimizer if optimizer is not None else partial(torch.optim.AdamW)
        self.lr = lr
        self.weight_decay = weight_decay
        self.group_lr = {"prompt": prompt_lr, "adapter": adapter_lr, "head": head_lr}
        self.group_weight_decay: dict[str, float | None] = {"adapter": adapter_weight_decay}
        self.warmup_epochs = warmup_epochs
        self.warmup_steps = warmup_steps
        self.scheduler_name = scheduler
        self.min_lr_ratio = min_lr_ratio
        self.label_smoothing = label_smoothing
        self.augment = augment
        self._augment_position = (-1, 0)  # (global step, batches drawn within it)
        # frozen weights are not checkpointed (see on_save_checkpoint), so loading must tolerate their absence
        self.strict_loading = False
        self.save_hyperparameters(ignore=["model", "optimizer", "augment"])
        metrics = self._make_metrics(num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    # -- task-specific parts -------------------------------------------------------------------------------------
    def _make_metrics(self, num_classes: int) -> MetricCollection:
        raise TypeError(f"{type(self).__name__} must define _make_metrics")

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} must define _loss")

    def _metric_inputs(self, logits: Tensor) -> Tensor:
        raise TypeError(f"{type(self).__name__} must define _metric_inputs")

    def _logits(self, images: Tensor, target: Tensor) -> Tensor:
        return self(images)

    # -- steps ---------------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Applies ``augment`` to training images (``evaluation`` to the others) on the device; targets unchanged.

        The random draws are keyed by ``(global step, batch within the step, process rank)``, so they repeat on
        every run and after a resume, and differ between processes.
        """
        trainer = self._trainer
        if self.augment is None or trainer is None:
            return batch
        images, target = batch
        if trainer.training:
            step, drawn = self._augment_position
            drawn = drawn + 1 if step == trainer.global_step else 0
            self._augment_position = (trainer.global_step, drawn)
            images = self.augment(images, (trainer.global_step, drawn, trainer.global_rank))
        else:
            images = self.augment.evaluation(images)
        return images, target

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> logits (B, K) or (B, K, H, W); under ``torch.compile`` when ``compile_mode`` is set."""
        if self._compiled_forward is not None:
            return self._compiled_forward(images)
        return self.model(images)

    def _step(self, batch: tuple[Tensor, Tensor], split: Literal["train", "val", "test"]) -> tuple[Tensor, Tensor]:
        images, target = batch
        logits = self._logits(images, target)
        loss = self._loss(logits, target)
        metrics = {"train": self.train_metrics, "val": self.val_metrics, "test": self.test_metrics}[split]
        metrics.update(self._metric_inputs(logits.detach()), target)
        on_step = split == "train"
        batch_size = images.shape[0]
        self.log(
            f"{split}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=not on_step,
        )

        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=split != "train", batch_size=batch_size)
        return loss, logits

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        for group in self.optimizers().optimizer.param_groups:
            self.log(f"lr/{group['name']}", group["lr"], on_step=True, on_epoch=False)
        loss = self._step(batch, "train")[0]
        self._check_finite_loss(loss, batch_idx)
        return loss

    def _check_finite_loss(self, loss: Tensor, batch_idx: int) -> None:
        """Raises :class:`NonFiniteLossError` (on every rank when any rank's loss is NaN/Inf) before ``backward``."""
        bad = not bool(torch.isfinite(loss.detach()).all())
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:
            # every rank must stop together, or the others would wait forever in the next collective
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        last = None
        if trainer is not None and trainer.checkpoint_callback is not None:
            last = getattr(trainer.checkpoint_callback, "last_model_path", None) or None
        kept = (
            f"the last good checkpoint is {last}"
            if last and Path(last).is_file()
            else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"non-finite training loss ({float(loss.detach().float().max())}) at epoch {self.current_epoch}, global "
            f"step {self.global_step} (batch {batch_idx}); training stopped before the optimiser step, so the weights "
            f"and checkpoints hold no NaN/Inf: {kept}. Lower the learning rates (task.module.optimizer.lr, "
            "prompt_lr, adapter_lr, head_lr) or keep gradient clipping on, then resume with ckpt_path=last"
        )

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    # -- optimisation --------------------------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups ``{"name", "params", ["lr"], ["weight_decay"]}``; empty groups are skipped.

        Keys absent from a group fall back to the optimiser factory's defaults.

        Raises:
            ValueError: if the model has a trainable parameter outside the prompt/adapter/head groups, or a group
                holds a frozen parameter, or there is nothing to train.
        """
        groups: list[dict[str, Any]] = []
        grouped: set[int] = set()
        named = self.model.trainable_parameters()
        unknown = set(named) - set(PARAM_GROUPS)
        if unknown:
            raise ValueError(f"trainable_parameters() returned groups {sorted(unknown)}; expected {PARAM_GROUPS}")
        for name in PARAM_GROUPS:
            params = list(named.get(name, []))
            frozen = [p for p in params if not p.requires_grad]
            if frozen:
                raise ValueError(f"parameter group {name!r} holds {len(frozen)} parameters with requires_grad=False")
            if not params:
                continue
            group: dict[str, Any] = {"name": name, "params": params}
            lr = self.group_lr[name] if self.group_lr[name] is not None else self.lr
            weight_decay = self.group_weight_decay.get(name)
            weight_decay = weight_decay if weight_decay is not None else self.weight_decay
            if lr is not None:
                group["lr"] = lr
            if weight_decay is not None:
                group["weight_decay"] = weight_decay
            groups.append(group)
            grouped.update(id(p) for p in params)
        stray = [n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in grouped]
        if stray:
            raise ValueError(f"trainable parameters outside the {PARAM_GROUPS} groups would not be optimised: {stray}")
        if not groups:
            raise ValueError("the model has no trainable parameters (prompt, adapter and head groups are all empty)")
        return groups

    def _warmup_and_total_steps(self) -> tuple[int, int]:
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("the cosine schedule needs a finite run: set trainer.max_epochs or trainer.max_steps")
        total = max(int(total), 1)
        if self.warmup_steps is not None:
            return self.warmup_steps, total
        max_epochs = self.trainer.max_epochs
        if not self.warmup_epochs:
            return 0, total
        if max_epochs is None or max_epochs <= 0:
            raise ValueError("warmup_epochs needs trainer.max_epochs > 0; give warmup_steps instead")
        steps_per_epoch = total / max_epochs
        return round(self.warmup_epochs * steps_per_epoch), total

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.param_groups())
        warmup, total = self._warmup_and_total_steps()
        schedule = partial(
            lr_factor, warmup_steps=warmup, total_steps=total, schedule=self.scheduler_name, min_ratio=self.min_lr_ratio
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def _frozen_keys(self) -> set[str]:
        return {f"model.{n}" for n, p in self.model.named_parameters() if not p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        frozen = self._frozen_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
        non_finite = [
            k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if non_finite:
            raise NonFiniteLossError(
                f"refusing to write a checkpoint: {non_finite[:8]} ({len(non_finite)} tensors) hold NaN/Inf at epoch "
                f"{self.current_epoch}, global step {self.global_step} (the training diverged); the previous "
                "checkpoint is kept. Lower the learning rates, then resume with ckpt_path=last"
            )
        checkpoint[FINGERPRINT_KEY] = frozen_fingerprint(self.model)
        if self.model.class_names is not None:
            checkpoint[CLASS_NAMES_KEY] = list(self.model.class_names)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        expected = set(self.state_dict()) - self._frozen_keys()
        present = set(checkpoint["state_dict"])
        missing, unexpected = sorted(expected - present), sorted(present - expected)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint does not match this model: missing {missing[:8]} ({len(missing)}), "
                f"unexpected {unexpected[:8]} ({len(unexpected)}); rebuild the model with the run's config"
            )
        stored = checkpoint.get(FINGERPRINT_KEY)
        if stored is not None:
            current = frozen_fingerprint(self.model)
            if not math.isclose(stored, current, rel_tol=1e-9, abs_tol=1e-6):
                raise ValueError(
                    f"checkpoint was trained on different frozen weights (fingerprint {stored!r}, this backbone "
                    f"{current!r}): use the run's backbone settings and seed"
                )


def lr_factor(
    step: int, warmup_steps: int, total_steps: int, schedule: Literal["cosine", "constant"], min_ratio: float
) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up, then cosine or constant.

    The warm-up rises linearly to 1 at ``step = warmup_steps``; the cosine decays from 1 to ``min_ratio`` at
    ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ClassificationModule(_PromptTuningModule):
    """Image classification: cross-entropy (optionally label-smoothed) on ``(B, K)`` logits.

    Args:
        model: the prompted, frozen ViT (``task="classification"``).
        num_classes: K (>= 2; binary tasks are 2-class multiclass).
        optimizer: factory ``params -> Optimizer`` (e.g. ``functools.partial(torch.optim.AdamW, lr=1e-3)``, or a
            Hydra ``_partial_: true`` config); defaults to AdamW with its own defaults.
        lr: learning rate for every group without its own, overriding the factory's.
        weight_decay: weight decay for every group, overriding the factory's.
        prompt_lr: learning rate of the prompt parameters.
        adapter_lr: learning rate of the FourierFT coefficients (0.1-0.3 in the FourierFT paper's ViT runs).
        head_lr: learning rate of the head.
        adapter_weight_decay: weight decay of the FourierFT coefficients.
        warmup_epochs: linear warm-up length in epochs (fractions allowed), converted to optimiser steps.
        warmup_steps: linear warm-up length in optimiser steps (instead of ``warmup_epochs``).
        scheduler: ``"cosine"`` decays to ``min_lr_ratio`` over the run after warm-up; ``"constant"`` holds.
        min_lr_ratio: final learning rate as a fraction of each group's.
        label_smoothing: cross-entropy label smoothing.
        augment: batch augmentation applied on the device after the transfer (:mod:`fftprompt.augment`; the
            ``augment`` config group), or None.
        compile_mode: ``None`` runs the model eagerly; a ``torch.compile`` mode (:data:`COMPILE_MODES`) runs its
            forward (features, prompts, FourierFT layers, head) compiled, with static shapes: ``"reduce-overhead"``
            adds CUDA graphs on GPUs. The first steps pay the compilation; a last smaller batch compiles once more.
        compile_backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` traces without generating code).
        head_init: ``"random"``: the head starts as built; ``"probe"``: before the first step it is fitted as an
            L-BFGS linear probe on the starting model's pooled features of the training images (LP-FT, Kumar et
            al., ICLR 2022), see :meth:`fit_head_probe`.
        head_init_weight_decays: The probe's L2 grid, chosen on the validation split.
    """

    def __init__(
        self,
        model: PromptedViT,
        num_classes: int,
        head_init: HeadInit = "random",
        head_init_weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
        **kwargs: Any,
    ) -> None:
        check_choice("task.module.head_init", head_init, HeadInit)
        # plain floats before save_hyperparameters reads this frame (a config's list would not reload weights_only)
        head_init_weight_decays = [float(w) for w in head_init_weight_decays]
        if not head_init_weight_decays or min(head_init_weight_decays) <= 0:
            raise ValueError(
                f"task.module.head_init_weight_decays={head_init_weight_decays}: expected a non-empty list of "
                "positive L2 coefficients"
            )
        super().__init__(model, num_classes, **kwargs)
        self.head_init = head_init
        self.head_init_weight_decays = head_init_weight_decays
        self.head_probe: dict[str, Any] | None = None  # what the probe initialisation chose, once it ran
        self.test_confusion = MulticlassConfusionMatrix(num_classes)

    def on_train_start(self) -> None:
        """With ``head_init="probe"``, fits the head as a linear probe before the first step (not on a resume)."""
        if self.head_init == "probe" and self.global_step == 0:
            self.fit_head_probe()

    def fit_head_probe(self) -> dict[str, Any]:
        """Sets the head to an L-BFGS linear probe on the current model's pooled features (LP-FT,
        :func:`fftprompt.head_probe.fit_head_probe`): the training split's images under the evaluation transform and
        preprocessing (no random augmentation), the weight decay chosen on the validation split.

        Returns:
            ``{"weight_decay", "val_accuracy" (per grid entry, None without a choice), "train_images"}``, also kept
            as :attr:`head_probe`.
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "evaluation_dataset"):
            raise ValueError(
                "task.module.head_init='probe' reads the training and validation splits from the trainer's data "
                "module (fftprompt.data); fit with datamodule=..., or set head_init='random'"
            )
        decays = self.head_init_weight_decays
        self.head_probe = fit_head_probe(
            self.model,
            datamodule.evaluation_dataset("train"),
            datamodule.evaluation_dataset("val") if len(decays) > 1 else None,
            self.num_classes,
            decays,
            batch_size=int(getattr(datamodule, "batch_size", 64)),
            device=self.device,
            preprocess=None if self.augment is None else self.augment.evaluation,
        )
        scores = self.head_probe["val_accuracy"]
        rank_zero_info(
            f"head initialised as a linear probe on {self.head_probe['train_images']} training images: weight decay "
            f"{self.head_probe['weight_decay']:g}"
            + (f", validation accuracy {max(scores):.3f}" if scores[0] is not None else "")
        )
        return self.head_probe

    def _make_metrics(self, num_classes: int) -> MetricCollection:
        return classification_metrics(num_classes)

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)

    def _metric_inputs(self, logits: Tensor) -> Tensor:
        return logits.float().softmax(dim=-1)

    def on_test_epoch_start(self) -> None:
        self.test_confusion.reset()

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        _, logits = self._step(batch, "test")
        self.test_confusion.update(logits.detach().argmax(dim=-1), batch[1])


class SegmentationModule(_PromptTuningModule):
    """Semantic segmentation: ``ce_weight * CE + dice_weight * soft Dice`` on ``(B, K, H, W)`` logits.

    Logits at another resolution than the ``(B, H, W)`` target are resized bilinearly to it first.

    Args:
        model: the prompted, frozen ViT (``task="segmentation"``).
        num_classes: K (>= 2, background = class 0).
        ce_weight: weight of the pixel cross-entropy.
        dice_weight: weight of the soft Dice loss (see :func:`soft_dice_loss`).
        dice_include_background: let the soft Dice loss average over class 0 too.
        **kwargs: optimisation arguments of :class:`ClassificationModule` (optimizer, lr, ... label_smoothing).
    """

    def __init__(
        self,
        model: PromptedViT,
        num_classes: int,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        dice_include_background: bool = False,
        **kwargs: Any,
    ) -> None:
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ValueError(f"ce_weight and dice_weight must be >= 0, not both 0; got {ce_weight}, {dice_weight}")
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.dice_include_background = dice_include_background
        super().__init__(model, num_classes, **kwargs)

    def _make_metrics(self, num_classes: int) -> MetricCollection:
        return segmentation_metrics(num_classes)

    def _logits(self, images: Tensor, target: Tensor) -> Tensor:
        logits = self(images)
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        if self.dice_weight:
            loss = loss + self.dice_weight * soft_dice_loss(logits, target, self.dice_include_background)
        return loss

    def _metric_inputs(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1)
