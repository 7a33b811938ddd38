"""Checkpoint selection by a linear probe: every ``every_n_steps`` optimiser steps the pretrained ViT's pooled tokens
of real images are probed (L-BFGS logistic regression fitted on the training split, weight decay and score taken on
the **validation** split; the test split is never read), and the weights with the best mean validation accuracy are
kept.

The pretraining loss says how well the ViT fits the rendered classes, not how well its features transfer; the probe
on a few hundred real images says the latter, and picks the step to publish.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from fftprompt.data.base import ImageDataModule
from fftprompt.linear_probe import select_linear_probe
from fftprompt.tokens import TokenLayout, pool
from fftprompt.utils import check_choice

__all__ = ["ProbeSelection", "vit_token_layout"]

_SPLITS = ("train", "val")  # what the selection reads: fit on train, choose and score on val (never test)


def vit_token_layout(model: nn.Module) -> TokenLayout:
    """The token layout of a (trainable, unwrapped) timm ``VisionTransformer``'s ``forward_features`` output."""
    grid = tuple(int(side) for side in model.patch_embed.grid_size)
    distilled = getattr(model, "dist_token", None) is not None
    class_tokens = (0, 1) if distilled else (0,) if getattr(model, "cls_token", None) is not None else ()
    return TokenLayout(int(model.num_prefix_tokens), 0, (grid[0], grid[1]), class_tokens)


@contextmanager
def _one_thread() -> Iterator[None]:
    """L-BFGS on a few hundred features runs thousands of tiny tensor operations: threads only add overhead (ten
    times slower with two threads on a busy two-core machine), so the probes are fitted on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ProbeSelection(Callback):
    """Keeps the pretraining step whose ViT gives the best linear probe on real images' validation splits.

    At step 0 (``at_start``), every ``every_n_steps`` optimiser steps and at the end of training, the ViT
    (``pl_module.model``, a timm ``VisionTransformer``; eval mode and no gradients while probed, train mode again
    after) turns every dataset's training and validation images into pooled tokens; for each weight decay of the grid
    a probe is fitted on the training images and scored on the validation images; the best validation accuracy is
    the dataset's, and the mean over the datasets is the step's score. The state dict of the best step (the first of
    equal scores) is kept as a CPU copy.

    Args:
        data: ``{name: data module}`` of classification data (a single module is named ``"data"``), normalised with
            the ViT's mean and std and without augmentation. Only the ``train`` and ``val`` splits are read.
        every_n_steps: Optimiser steps between evaluations.
        pooling: ``"cls"`` (class token) or ``"mean"`` (mean of the patch tokens), after timm's final norm.
        weight_decays: The probe's L2 grid, chosen per dataset on its validation split.
        max_images_per_split: Use at most this many images of each split (a fixed, seeded draw); None: all.
        batch_size: Images per forward pass.
        at_start: Also evaluate the starting weights (step 0) of a run that starts from step 0.
        seed: Seed of the ``max_images_per_split`` draw.

    Attributes:
        curve: ``[{"step", "images_seen", "val_accuracy": {name: acc}, "weight_decay": {name: wd}, "score",
            "seconds"}, ...]`` in step order.
        best_state_dict: CPU copy of the best step's ``model.state_dict()`` (None before the first evaluation).

    Both survive Lightning checkpoints (:meth:`state_dict`), so a resumed run keeps its curve and its best weights.
    """

    def __init__(
        self,
        data: Mapping[str, ImageDataModule] | ImageDataModule,
        every_n_steps: int = 500,
        pooling: str = "cls",
        weight_decays: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
        max_images_per_split: int | None = None,
        batch_size: int = 64,
        at_start: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_choice("selection pooling", pooling, ("cls", "mean"))
        if every_n_steps < 1 or batch_size < 1:
            raise ValueError(f"selection: every_n_steps={every_n_steps} and batch_size={batch_size} must be >= 1")
        if not weight_decays or min(float(w) for w in weight_decays) <= 0:
            raise ValueError(f"selection.weight_decays={list(weight_decays)}: expected a non-empty list of positives")
        if max_images_per_split is not None and max_images_per_split < 2:
            raise ValueError(f"selection.max_images_per_split={max_images_per_split}: expected >= 2 or null (all)")
        datasets = {"data": data} if isinstance(data, ImageDataModule) else dict(data)
        if not datasets:
            raise ValueError("selection.data is empty: give at least one data module, e.g. selection.data.dtd.root=...")
        for name, module in datasets.items():
            if not isinstance(module, ImageDataModule) or module.task != "classification":
                raise ValueError(f"selection.data.{name}: expected a classification data module, got {module!r}")
            if module.augment:
                raise ValueError(
                    f"selection.data.{name}: augment=true; the probe reads the plain images (augment=false)"
                )
        self.data = datasets
        self.every_n_steps = int(every_n_steps)
        self.pooling = pooling
        self.weight_decays = [float(w) for w in weight_decays]
        self.max_images_per_split = None if max_images_per_split is None else int(max_images_per_split)
        self.batch_size = int(batch_size)
        self.at_start = bool(at_start)
        self.seed = int(seed)
        self.curve: list[dict[str, Any]] = []
        self.best_state_dict: dict[str, Tensor] | None = None
        self._best_index: int | None = None
        self._splits: dict[str, dict[str, Dataset]] | None = None

    # -- data ---------------------------------------------------------------------------------------------------------
    def prepare(self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        """Sets the data modules up (once) and draws the images used; with ``mean``/``std`` (the model's), checks
        that the data is normalised with them. Errors name the ``selection.data`` entry."""
        if self._splits is not None:
            return
        splits: dict[str, dict[str, Dataset]] = {}
        for name, module in self.data.items():
            for what, wanted in (("mean", mean), ("std", std)):
                given = getattr(module, what)
                if wanted is not None and any(abs(a - float(b)) > 1e-6 for a, b in zip(given, wanted, strict=True)):
                    raise ValueError(
                        f"selection.data.{name}: images normalised with {what}={list(given)} but the ViT expects "
                        f"{[float(v) for v in wanted]}"
                    )
            try:
                module.setup("fit")
                datasets = {split: module.dataset(split) for split in _SPLITS}
            except ValueError as error:
                raise ValueError(f"selection.data.{name}: {str(error).splitlines()[0]}") from error
            if module.num_classes < 2:
                raise ValueError(f"selection.data.{name}: {module.num_classes} class; the probe needs at least 2")
            splits[name] = {split: self._subset(dataset, split) for split, dataset in datasets.items()}
            labels = getattr(splits[name]["train"], "labels", None)
            if labels is not None and len({int(label) for label in labels}) < 2:
                raise ValueError(
                    f"selection.data.{name}: the training images used hold one class; raise "
                    "selection.max_images_per_split (or null: all)"
                )
        self._splits = splits

    def _subset(self, dataset: Dataset, split: str) -> Dataset:
        size = len(dataset)  # type: ignore[arg-type]
        if self.max_images_per_split is None or size <= self.max_images_per_split:
            return dataset
        generator = torch.Generator().manual_seed(self.seed + _SPLITS.index(split))
        indices = sorted(torch.randperm(size, generator=generator)[: self.max_images_per_split].tolist())
        subset = Subset(dataset, indices)
        labels = getattr(dataset, "labels", None)
        if labels is not None:
            subset.labels = [labels[i] for i in indices]  # type: ignore[attr-defined]
        return subset

    # -- evaluation ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, model: nn.Module, dataset: Dataset, device: torch.device) -> tuple[Tensor, Tensor]:
        """Pooled tokens ``(N, D)`` float64 and labels ``(N,)`` of ``dataset``'s images (the model in eval mode)."""
        layout = vit_token_layout(model)
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=0)
        parts, labels = [], []
        for images, targets in loader:
            tokens = model.forward_features(images.to(device, non_blocking=True).float())
            parts.append(pool(tokens, layout, self.pooling, norm=model.fc_norm).double().cpu())
            labels.append(torch.as_tensor(targets).long().cpu())
        return torch.cat(parts), torch.cat(labels)

    def measure(self, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
        """Per dataset, the best validation accuracy over the weight-decay grid and that weight decay:
        ``{"val_accuracy": {name: acc}, "weight_decay": {name: wd}}``. The model is left in its training mode."""
        self.prepare()
        assert self._splits is not None
        device = torch.device(device)
        accuracy, chosen = {}, {}
        was_training = model.training
        model.eval()
        try:
            for name, splits in self._splits.items():
                x_train, y_train = self.features(model, splits["train"], device)
                x_val, y_val = self.features(model, splits["val"], device)
                if len(y_train.unique()) < 2:
                    raise ValueError(
                        f"selection.data.{name}: the training images used hold one class; raise "
                        "selection.max_images_per_split (or null: all)"
                    )
                num_classes = self.data[name].num_classes
                with _one_thread():
                    probe, scores = select_linear_probe(
                        (x_train, y_train), (x_val, y_val), num_classes, self.weight_decays
                    )
                accuracy[name], chosen[name] = max(scores), probe.weight_decay  # equal scores: the smaller decay
        finally:
            model.train(was_training)
        return {"val_accuracy": accuracy, "weight_decay": chosen}

    def evaluate(self, model: nn.Module, step: int, images_seen: int | None = None) -> dict[str, Any]:
        """Probes ``model`` at ``step``, appends the entry to :attr:`curve` and keeps its weights if it is the best
        so far (strictly better: the earlier of equal scores stays)."""
        started = time.perf_counter()
        device = next(model.parameters()).device
        measured = self.measure(model, device)
        accuracies = measured["val_accuracy"]
        entry = {
            "step": int(step),
            "images_seen": None if images_seen is None else int(images_seen),
            "val_accuracy": {name: round(acc, 6) for name, acc in accuracies.items()},
            "weight_decay": measured["weight_decay"],
            "score": round(sum(accuracies.values()) / len(accuracies), 6),
            "seconds": round(time.perf_counter() - started, 2),
        }
        self.curve.append(entry)
        best = self.best
        if best is None or entry["score"] > best["score"]:
            self._best_index = len(self.curve) - 1
            self.best_state_dict = {
                key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()
            }
        return entry

    @property
    def best(self) -> dict[str, Any] | None:
        """The curve entry of the kept weights (None before the first evaluation)."""
        return None if self._best_index is None else self.curve[self._best_index]

    def load_best(self, model: nn.Module) -> dict[str, Any]:
        """Loads the best step's weights into ``model``; returns that step's curve entry."""
        if self.best is None or self.best_state_dict is None:
            raise ValueError("checkpoint selection evaluated no step: nothing to choose (did training run?)")
        model.load_state_dict(self.best_state_dict)
        return self.best

    def describe(self) -> dict[str, Any]:
        """The selection for the model card: data (names, modules, roots, classes, images used per split; the
        validation split chose), settings, the chosen step and score, and the curve."""
        self.prepare()
        assert self._splits is not None
        data = {
            name: {
                "module": type(module).__name__,
                "root": None if getattr(module, "root", None) is None else str(module.root),  # type: ignore[attr-defined]
                "image_size": int(module.image_size),
                "classes": module.num_classes,
                "split_sizes": {split: len(dataset) for split, dataset in self._splits[name].items()},  # type: ignore[arg-type]
            }
            for name, module in self.data.items()
        }
        best = self.best
        return {
            "data": data,
            "chosen_on": "val",
            "pooling": self.pooling,
            "every_n_steps": self.every_n_steps,
            "weight_decays": self.weight_decays,
            "max_images_per_split": self.max_images_per_split,
            "chosen_step": None if best is None else best["step"],
            "chosen_score": None if best is None else best["score"],
            "curve": list(self.curve),
        }

    # -- Lightning hooks ----------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        mean, std = getattr(pl_module, "mean", None), getattr(pl_module, "std", None)
        as_list = lambda t: None if t is None else [float(v) for v in torch.as_tensor(t).flatten()]  # noqa: E731
        self.prepare(as_list(mean), as_list(std))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start and trainer.global_step == 0 and not self._evaluated(0):
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = int(trainer.global_step)
        if step > 0 and step % self.every_n_steps == 0 and not self._evaluated(step):
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._evaluated(int(trainer.global_step)):
            self._evaluate(trainer, pl_module)

    def _evaluated(self, step: int) -> bool:
        return bool(self.curve) and self.curve[-1]["step"] == step

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        batch_size = getattr(pl_module, "batch_size", None)
        images = None if batch_size is None else step * trainer.accumulate_grad_batches * int(batch_size)
        entry = self.evaluate(pl_module.model, step, images)
        accuracies = ", ".join(f"{name} {acc:.3f}" for name, acc in entry["val_accuracy"].items())
        print(
            f"selection: step {step}: validation accuracy {accuracies}, score {entry['score']:.4f} "
            f"(best: step {self.best['step']}, {entry['seconds']:.1f} s)",  # type: ignore[index]
            flush=True,
        )

    # -- checkpoints --------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors (loadable with ``weights_only=True``): the curve, the best index and weights."""
        return {
            "curve": [dict(entry) for entry in self.curve],
            "best_index": self._best_index,
            "best_state_dict": self.best_state_dict,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = [dict(entry) for entry in state_dict.get("curve", [])]
        self._best_index = state_dict.get("best_index")
        self.best_state_dict = state_dict.get("best_state_dict")
