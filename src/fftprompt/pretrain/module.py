"""Lightning module of pretraining from rendered images: a whole timm ViT trained by an objective (supervised on the
source's classes, or contrastive) on batches rendered on the training device from per-step seeds.

The data loader only counts batches: :meth:`PretrainModule.on_after_batch_transfer` replaces each count by a batch
rendered on the module's device (outside the mixed-precision autocast) from :func:`batch_seed` ``(seed, global step,
micro-batch)``, and by the objective's random views of it, so a resumed run renders exactly the batches the
uninterrupted run would have rendered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Timer
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from fftprompt.lit import lr_factor
from fftprompt.pretrain.objectives import SimCLR, Supervised

__all__ = ["PretrainModule", "Source", "batch_seed"]


class Source(Protocol):
    """What the module renders its batches from (:class:`~fftprompt.pretrain.FractalDB` and the other sources)."""

    num_classes: int  # K >= 2, or 0 for a source without classes
    image_size: int

    def sample(self, batch_size: int, seed: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """``images (B, 3, H, W)`` in ``[0, 1]`` and ``labels (B,)`` (zeros without classes), all from ``seed``."""
        ...

    def fingerprint(self) -> str:
        """SHA256 of what defines the source."""
        ...

    def describe(self) -> dict[str, object]:
        """Settings and summary for the model card."""
        ...


def batch_seed(seed: int, step: int, micro_batch: int = 0) -> int:
    """The seed of the batch rendered for optimiser step ``step`` (and micro-batch, with gradient accumulation)."""
    return (seed & 0xFFFF) << 40 | (micro_batch & 0xFF) << 32 | (step & 0xFFFFFFFF)


# XOR-ed into a batch's seed for the generator of its views (the source draws from the batch seed itself)
_VIEW_SEED = 1 << 62


class _BatchCounter(Dataset):
    """``length`` items, each its own index (the module renders the images)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tensor:
        return torch.tensor(index)


class _NoGrad(nn.Module):
    """Runs ``model`` without recording gradients (its parameters stay as they are during a head warm-up)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(images)


class PretrainModule(L.LightningModule):
    """Full training of a timm ViT on rendered images by an objective (AdamW, warm-up + cosine).

    Args:
        model: Trainable timm ViT without a classifier: ``(B, 3, H, W) -> (B, D)`` pooled features (the
            objective owns the head).
        source: The rendered images (and their classes, if any).
        objective: What the model learns from them (its parameters, e.g. a projection head, are trained too).
        batch_size: Images per rendered batch.
        mean: Per-channel normalisation mean of the model (images are rendered in ``[0, 1]``).
        std: Per-channel normalisation std.
        seed: Seed of the rendered batches (:func:`batch_seed`).
        optimizer: Optimiser factory taking the parameter groups (default: AdamW).
        warmup_steps: Linear warm-up length in optimiser steps.
        min_lr_ratio: Floor of the cosine decay, as a fraction of the peak rate. The cosine runs over
            ``trainer.max_steps``, or over ``trainer.max_time`` when that budget runs out first (then the schedule,
            and so the weights, depend on the machine's speed).
        history_every: Optimiser steps per entry of :attr:`history` (mean loss and accuracy over the window).
        head_warmup_steps: Optimiser steps at the start during which only the objective's head trains (the ViT's
            features are computed without gradients): a fresh head does not disturb weights a run continues from.

    Attributes:
        history: ``[{"step", "images_seen", "loss", "acc", "lr", "seconds"}, ...]`` (kept in checkpoints).
    """

    def __init__(
        self,
        model: nn.Module,
        source: Source,
        objective: Supervised | SimCLR,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int = 0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        history_every: int = 50,
        head_warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or warmup_steps < 0 or history_every < 1 or head_warmup_steps < 0:
            raise ValueError(
                "expected batch_size >= 1, warmup_steps >= 0, history_every >= 1 and head_warmup_steps >= 0; got "
                f"{batch_size}, {warmup_steps}, {history_every}, {head_warmup_steps}"
            )
        self.model = model
        self.source = source
        self.objective = objective
        self.batch_size = batch_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.seed = seed
        self.optimizer_factory = optimizer if optimizer is not None else partial(torch.optim.AdamW)
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.history_every = history_every
        self.head_warmup_steps = head_warmup_steps
        self.history: list[dict[str, float]] = []
        self._window: list[tuple[float, float]] = []
        self._fit_seconds = 0.0
        self._fit_started = time.perf_counter()

    def train_dataloader(self) -> DataLoader:
        """One item per micro-batch of the whole run (the images are rendered in :meth:`on_after_batch_transfer`)."""
        trainer = self.trainer
        if trainer.max_steps is None or trainer.max_steps < 1:
            raise ValueError("pretraining needs trainer.max_steps >= 1 (the cosine schedule's length)")
        return DataLoader(_BatchCounter(trainer.max_steps * trainer.accumulate_grad_batches), batch_size=None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[list[Tensor], Tensor]:
        """Renders the batch for this optimiser step on the module's device and the objective's views of it:
        ``count -> ([views (B, 3, H, W) normalised], targets)`` (labels ``(B,)``, or soft targets ``(B, K)`` of a
        mixing objective); a ``(images, labels)`` pair handed in (in ``[0, 1]``) gets its views the same way."""
        accumulate = self.trainer.accumulate_grad_batches if self._trainer is not None else 1
        step = self.trainer.global_step if self._trainer is not None else 0
        if isinstance(batch, (tuple, list)):
            images, labels = batch[0], batch[1]
            seed = batch_seed(self.seed, step)
        else:
            seed = batch_seed(self.seed, step, int(batch) % accumulate)
            images, labels = self.source.sample(self.batch_size, seed, self.device)
        generator = torch.Generator(images.device).manual_seed(seed ^ _VIEW_SEED)
        views, targets = self.objective.views(images, labels, generator)
        return [(view - self.mean) / self.std for view in views], targets

    def forward(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W) -> (B, K)`` logits, or ``(B, D)`` pooled features without a classifier."""
        return self.model(images)

    def training_step(self, batch: tuple[list[Tensor], Tensor], batch_idx: int) -> Tensor:
        views, targets = batch
        model = _NoGrad(self.model) if self.global_step < self.head_warmup_steps else self.model
        loss, accuracy = self.objective.loss(model, views, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite pretraining loss at global step {self.global_step}; lower the learning rate "
                "(optimizer.lr) or keep gradient clipping on (trainer.gradient_clip_val)"
            )
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=len(targets))
        self.log("train/acc", accuracy, on_step=True, prog_bar=True, batch_size=len(targets))
        self.log("lr", self.optimizers().optimizer.param_groups[0]["lr"], on_step=True)
        self._window.append((float(loss.detach()), float(accuracy)))
        # recorded here, not in on_train_batch_end: checkpoint callbacks run before that hook and must see the entry
        step = self.global_step + 1  # the optimiser step this batch completes
        if (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0 and step % self.history_every == 0:
            self._record(step)
        return loss

    def _record(self, step: int) -> None:
        losses, accuracies = zip(*self._window, strict=True)
        self.history.append(
            {
                "step": step,
                "images_seen": step * self.trainer.accumulate_grad_batches * self.batch_size,
                "loss": round(sum(losses) / len(losses), 4),
                "acc": round(sum(accuracies) / len(accuracies), 4),
                "lr": self.optimizers().optimizer.param_groups[0]["lr"],
                "seconds": round(self.fit_seconds, 1),
            }
        )
        self._window = []

    def on_fit_start(self) -> None:
        self._fit_started = time.perf_counter()

    def on_fit_end(self) -> None:
        if self._window:
            self._record(self.trainer.global_step)
        self._fit_seconds = self.fit_seconds
        self._fit_started = time.perf_counter()

    @property
    def fit_seconds(self) -> float:
        """Seconds spent in ``fit`` so far, over all resumed runs."""
        return self._fit_seconds + time.perf_counter() - self._fit_started

    def configure_optimizers(self) -> dict[str, Any]:
        # biases, norms, tokens and positional embeddings are not decayed (as DeiT and timm do)
        named = [*self.model.named_parameters(), *self.objective.named_parameters()]
        no_decay = [p for n, p in named if p.ndim <= 1 or n.endswith(("_token", "pos_embed"))]
        decay = [p for n, p in named if p.ndim > 1 and not n.endswith(("_token", "pos_embed"))]
        optimizer = self.optimizer_factory(
            [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}],
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _lr_factor(self, step: int) -> float:
        """Warm-up, then a cosine over ``trainer.max_steps`` or over ``trainer.max_time``, whichever runs out first:
        a run stopped by its wall-clock budget still ends at the bottom of its schedule."""
        total = int(self.trainer.max_steps)
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and step >= self.warmup_steps:
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
            if elapsed + remaining > 0:
                step = max(step, round(total * elapsed / (elapsed + remaining)))
        return lr_factor(step, self.warmup_steps, total, schedule="cosine", min_ratio=self.min_lr_ratio)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fftprompt_pretrain"] = {
            "history": self.history,
            "window": self._window,
            "fit_seconds": self.fit_seconds,
            "source_sha256": self.source.fingerprint(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("fftprompt_pretrain", {})
        if stored.get("source_sha256") not in (None, self.source.fingerprint()):
            raise ValueError(
                "checkpoint was pretrained on another source (source_sha256 differs): resume with the run's source "
                "settings and seed"
            )
        self.history = list(stored.get("history", []))
        self._window = [tuple(entry) for entry in stored.get("window", [])]
        self._fit_seconds = float(stored.get("fit_seconds", 0.0))
