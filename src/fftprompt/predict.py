"""Predictions of a finished run on new images: ``fftprompt-predict run_dir=RUN images=FOLDER``.

The run is reloaded with :func:`fftprompt.rundir.load_run`; every image goes through the run's input pipeline (its
test-split transform, then its preprocessing filter if it has one: as ``fftprompt-eval`` feeds its test images), in
batches, on the CPU or a GPU. ``images`` names files (paths, globs, folders read with their sub-folders) or a split of
the run's own data, ``test`` (all of it) or ``test:8`` (8 items evenly spaced; also ``train``, ``val``), whose items
come as the run's data module gives them. Outputs, in ``out_dir`` (default ``RUN/predict``)::

    predictions.csv      classification: path (or "<split> #<index>"), then the top-k classes and their probabilities
    masks/<name>.png     segmentation: one class-index mask per image (mode L), in the image's original size (a
                         split's items: the size the run sees them at)
    overlays.png         segmentation: the first few images with their masks drawn over them
    predict.json         what was predicted: run, images, skipped files and why, settings, time

Class names come from the run (``adapter.json``), else from the run's data module (which needs the training data);
``class_names=index`` writes class indices instead. ``merge=true`` folds the FourierFT deltas into the frozen weights
before predicting (:func:`fftprompt.fourierft.merge_fourierft`): the same outputs up to float32 rounding, without the
per-layer delta.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from fftprompt.data.io import OnBadFile, image_paths, read_image
from fftprompt.data.splits import evenly_spaced, split_selection
from fftprompt.exporters import OnnxModel, default_onnx_file
from fftprompt.fourierft import merge_fourierft
from fftprompt.report import save_figure
from fftprompt.rundir import LoadedRun, load_run, read_class_names
from fftprompt.runfiles import MASK_DIR, OVERLAY_FIGURE, PREDICT_DIR, PREDICT_SUMMARY, PREDICTIONS_FILE
from fftprompt.utils import atomic_write, write_json_atomic

__all__ = ["predict"]

ClassNameSource = Literal["run", "index"]
Runtime = Literal["torch", "onnx"]


class _ImageFiles(Dataset):
    """``(position, image (3, S, S) or None, original (H, W) or the reason it could not be read)`` per file."""

    def __init__(self, paths: Sequence[Path], transform: Any, on_bad_file: OnBadFile) -> None:
        self.paths, self.transform, self.on_bad_file = list(paths), transform, on_bad_file

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, tuple[int, int] | str]:
        try:
            image = read_image(self.paths[index])
        except ValueError as error:
            if self.on_bad_file == "error":
                raise ValueError(f"{error} (on_bad_file=skip leaves unreadable files out)") from error
            return index, None, str(error)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        return index, self.transform(tv_tensors.Image(image)).as_subclass(Tensor), size


class _SplitItems(Dataset):
    """``(position, image (3, S, S), (S, S))`` per chosen item of a run's split dataset (transformed by it)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, Tensor, tuple[int, int]]:
        image = self.dataset[self.indices[position]][0]
        return position, image, (int(image.shape[-2]), int(image.shape[-1]))


@dataclass
class _Inputs:
    """What ``images=`` names, ready to predict.

    Attributes:
        dataset: ``(position, image or None, size or the reason it could not be read)`` per item.
        names: Per item, its path or ``"<split> #<index>"`` (``predictions.csv``, skipped files).
        mask_names: Per item, its mask file below ``masks/``.
        show: Position -> the item as ``(3, H, W)`` floats in ``[0, 1]``, for the overlays figure.
        source: ``"files"`` or the split, for ``predict.json``.
    """

    dataset: Dataset
    names: list[str]
    mask_names: list[Path]
    show: Callable[[int], Tensor]
    source: str


def _inputs(run: LoadedRun, images: str | Path | Sequence[str | Path], on_bad_file: OnBadFile) -> _Inputs:
    """The items ``images`` names: a split of the run's data (``test``, ``test:8``) or image files."""
    selection = split_selection(images)
    if selection is not None:
        split, count = selection
        dataset = run.datamodule.dataset(split)  # type: ignore[arg-type]
        indices = evenly_spaced(len(dataset), count)  # type: ignore[arg-type]
        items = _SplitItems(dataset, indices)
        return _Inputs(
            dataset=items,
            names=[f"{split} #{index}" for index in indices],
            mask_names=[Path(f"{split}_{index:05d}.png") for index in indices],
            show=lambda position: run.datamodule.denormalize(items[position][1]),
            source=split,
        )
    paths = image_paths(images)

    def show(position: int) -> Tensor:
        image = read_image(paths[position])
        return image.float() / (255.0 if image.dtype == torch.uint8 else 1.0)

    return _Inputs(
        dataset=_ImageFiles(paths, run.datamodule.transform("test"), on_bad_file),
        names=[str(path) for path in paths],
        mask_names=_relative_names(paths),
        show=show,
        source="files",
    )


def _refuse_existing(outputs: dict[str, Path], overwrite: bool) -> None:
    """Raises when ``outputs`` (file and folder paths) hold an earlier prediction, unless ``overwrite``."""
    if overwrite:
        return
    for path in outputs.values():
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            raise ValueError(f"{path} exists (an earlier prediction); choose another out_dir or pass overwrite=true")


def predict(
    run_dir: str | Path,
    images: str | Path | Sequence[str | Path],
    out_dir: str | Path | None = None,
    *,
    batch_size: int = 32,
    top_k: int = 5,
    device: str = "cpu",
    on_bad_file: OnBadFile = "error",
    merge: bool = False,
    class_names: ClassNameSource | Sequence[str] = "run",
    overlays: int = 4,
    data_root: str | Path | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    backbone: Mapping[str, Any] | None = None,
    runtime: Runtime = "torch",
    onnx_file: str | Path | None = None,
) -> dict[str, Any]:
    """Predicts every image file named by ``images`` with a finished run's model.

    Args:
        run_dir: Directory written by ``fftprompt-train``.
        images: Image paths, a glob, a folder (read with its sub-folders), or a list of these; or a split of the
            run's data: ``"test"`` (every item), ``"test:8"`` (8 evenly spaced), likewise ``train`` and ``val``.
        out_dir: Output folder; default ``run_dir/predict``.
        batch_size: Images per forward pass.
        top_k: Classes written per image (classification; at most the number of classes).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        on_bad_file: ``"error"`` stops at the first unreadable file, naming it; ``"skip"`` leaves such files out
            (counted, listed in ``predict.json``).
        merge: Fold the FourierFT deltas into the frozen weights first (faster; same outputs up to rounding).
        class_names: ``"run"`` (recorded in the run, else its data module's), ``"index"`` (class indices), or the
            names themselves in label order.
        overlays: Segmentation: images drawn with their masks in ``overlays.png`` (0: no figure).
        data_root: The run's data root, when class names must come from the data and it moved since training.
        num_workers: Loader worker processes that read and transform the files.
        overwrite: Replace the outputs of an earlier prediction in ``out_dir``.
        progress: Show a progress bar (on stderr).
        backbone: ``{"checkpoint_path": file}``: the run's backbone weights file, moved (same SHA256).
        runtime: ``"torch"`` (the run's model) or ``"onnx"``: the run's exported ``model.onnx`` in onnxruntime,
            fed the same preprocessed images (the run gives the transform and class names).
        onnx_file: The ``.onnx`` file for ``runtime="onnx"``; default ``run_dir/export/onnx/model.onnx``.

    Returns:
        ``{"out_dir", "predictions" (csv) or "masks" (folder), "overlays" (figure or None), "summary" (json),
        "predicted", "skipped"}``.
    """
    _check_arguments(batch_size, top_k, on_bad_file, overlays, num_workers, device)
    if runtime not in get_args(Runtime):
        raise ValueError(f"runtime={runtime!r}; expected one of {get_args(Runtime)}")
    run = load_run(run_dir, data_root=data_root, device=device, backbone=backbone)
    inputs = _inputs(run, images, on_bad_file)
    total = len(inputs.names)
    directory = Path(out_dir) if out_dir is not None else run.run_dir / PREDICT_DIR
    outputs = {
        "predictions": directory / PREDICTIONS_FILE,
        "masks": directory / MASK_DIR,
        "overlays": directory / OVERLAY_FIGURE,
        "summary": directory / PREDICT_SUMMARY,
    }
    _refuse_existing(outputs, overwrite)
    names = _class_names(run, class_names)
    model = run.model
    if merge:
        if not model.adapted_modules:
            raise ValueError(f"merge=true: the run {run.run_dir} has no FourierFT layers to merge")
        merge_fourierft(model.backbone.model)
    forward = _onnx_forward(run, onnx_file, device) if runtime == "onnx" else run.logits
    segmentation = model.task == "segmentation"
    loader = DataLoader(
        inputs.dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
    )
    start = time.perf_counter()
    rows: list[list[str]] = []
    masks: list[Path] = []
    masked: list[int] = []  # the positions of ``masks``' images
    skipped: list[dict[str, str]] = []
    with _progress_bar(progress, total) as advance, torch.inference_mode():
        for batch in loader:
            good = [(index, image, size) for index, image, size in batch if image is not None]
            skipped += [{"path": inputs.names[i], "reason": str(why)} for i, image, why in batch if image is None]
            if good:
                logits = forward(torch.stack([image for _, image, _ in good]).to(device)).float()
                if segmentation:
                    for (index, _, size), mask_logits in zip(good, logits, strict=True):
                        masks.append(_write_mask(mask_logits, size, outputs["masks"] / inputs.mask_names[index]))
                        masked.append(index)
                else:
                    rows += _top_k_rows([inputs.names[index] for index, _, _ in good], logits, names, top_k)
            advance(len(batch))
    seconds = time.perf_counter() - start
    if skipped:
        shown = "\n  ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5])
        warnings.warn(f"skipped {len(skipped)} of {total} unreadable image files:\n  {shown}", stacklevel=2)
    if len(skipped) == total:
        raise ValueError(f"none of the {total} image files could be read (first: {skipped[0]['path']})")
    written: dict[str, Any] = {"out_dir": directory, "overlays": None, "summary": outputs["summary"]}
    if segmentation:
        written["masks"] = outputs["masks"]
        if overlays > 0:
            shown_images = [(inputs.show(i), inputs.names[i]) for i in masked[:overlays]]
            written["overlays"] = _plot_overlays(shown_images, masks[:overlays], names, outputs["overlays"])
    else:
        written["predictions"] = _write_csv(outputs["predictions"], rows, min(top_k, len(names)))
    written.update(predicted=total - len(skipped), skipped=len(skipped))
    write_json_atomic(
        outputs["summary"],
        {
            "run_dir": str(run.run_dir),
            "task": model.task,
            "images": total,
            "source": inputs.source,
            "predicted": written["predicted"],
            "skipped": skipped,
            "class_names": names,
            "merged_fourierft": bool(merge),
            "runtime": runtime if runtime == "torch" else f"onnx: {forward.path}",
            "device": device,
            "batch_size": batch_size,
            "top_k": min(top_k, len(names)) if not segmentation else None,
            "seconds": round(seconds, 3),
            "pipeline": run.pipeline.describe(),
        },
    )
    return written


def _onnx_forward(run: LoadedRun, onnx_file: str | Path | None, device: str) -> OnnxModel:
    """The run's ONNX export in onnxruntime (``runtime=onnx``), checked to take the run's image size."""
    path = Path(onnx_file) if onnx_file is not None else default_onnx_file(run.run_dir)
    if run.pipeline.preprocess is not None:
        raise ValueError(
            f"runtime=onnx: the run {run.run_dir} preprocesses its images ({run.pipeline.preprocess!r}), which no ONNX "
            "export of it includes; predict with runtime=torch"
        )
    session = OnnxModel(path, device)
    size = run.datamodule.image_size
    if session.input_shape[1:] != (size, size):
        raise ValueError(
            f"onnx_file={str(path)!r} takes {session.input_shape[1:]} images, the run {run.run_dir} makes "
            f"{size}x{size} ones: export this run with fftprompt-export format=onnx"
        )
    return session


def _check_arguments(
    batch_size: int, top_k: int, on_bad_file: str, overlays: int, num_workers: int, device: str
) -> None:
    for name, value, lowest in (("batch_size", batch_size, 1), ("top_k", top_k, 1), ("overlays", overlays, 0)):
        if value < lowest:
            raise ValueError(f"{name}={value}; expected an integer >= {lowest}")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers}; expected an integer >= 0")
    if on_bad_file not in get_args(OnBadFile):
        raise ValueError(f"on_bad_file={on_bad_file!r}; expected one of {get_args(OnBadFile)}")
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"device={device!r} is not a torch device ({error}); expected e.g. cpu or cuda") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}, but CUDA is not available here; use device=cpu")


def _class_names(run: LoadedRun, source: ClassNameSource | Sequence[str]) -> list[str]:
    """The class names in label order, from ``source`` (see :func:`predict`)."""
    num_classes = int(run.model.head.num_classes)
    if source == "index":
        return [str(index) for index in range(num_classes)]
    if source == "run":
        names = read_class_names(run.run_dir)
        if names is None:
            try:  # file datasets scan their root for the class names
                names = run.datamodule.class_names
            except ValueError as error:
                raise ValueError(
                    f"{run.run_dir} records no class names and its data cannot be read to find them "
                    f"({str(error).splitlines()[0]}); pass data_root=<the run's data>, class_names=index for class "
                    "indices, or the names as class_names=[...]"
                ) from error
        where = f"the run {run.run_dir}"
    elif isinstance(source, str):
        raise ValueError(f"class_names={source!r}; expected 'run', 'index' or a list of names")
    else:
        names, where = [str(name) for name in source], "class_names"
    if len(names) != num_classes:
        raise ValueError(f"{where} gives {len(names)} class names but the model has {num_classes} classes")
    return list(names)


@contextlib.contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over ``total`` images on stderr (or nothing); yields ``advance(count)``."""
    if not enabled:
        yield lambda count: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True)) as bar:
        task = bar.add_task("predicting", total=total)
        yield lambda count: bar.advance(task, count)


def _top_k_rows(paths: Sequence[str], logits: Tensor, names: Sequence[str], top_k: int) -> list[list[str]]:
    """``[path, class_1, probability_1, ...]`` per image of ``(B, K)`` logits."""
    probabilities = logits.softmax(dim=-1)
    values, indices = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
    rows = []
    for path, row_values, row_indices in zip(paths, values.tolist(), indices.tolist(), strict=True):
        cells = [str(path)]
        for value, index in zip(row_values, row_indices, strict=True):
            cells += [names[index], f"{value:.6g}"]
        rows.append(cells)
    return rows


def _write_csv(path: Path, rows: list[list[str]], top_k: int) -> Path:
    import csv
    import io

    header = ["path"] + [f"{kind}_{rank}" for rank in range(1, top_k + 1) for kind in ("class", "probability")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write(path, lambda temporary: temporary.write_text(buffer.getvalue(), encoding="utf-8"))


def _relative_names(paths: Sequence[Path]) -> list[Path]:
    """Mask file names: each image's path below the inputs' common folder, with ``.png`` (unique per image)."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    names = [p.relative_to(common).with_suffix(".png") for p in resolved]
    seen: dict[Path, int] = {}
    unique = []
    for name in names:  # a.jpg and a.png in one folder would share a.png
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else name.with_name(f"{name.stem}_{count}.png"))
    return unique


def _write_mask(logits: Tensor, size: tuple[int, int], path: Path) -> Path:
    """Class-index mask of ``(K, S, S)`` logits resized (bilinearly) to ``size = (H, W)``, as an 8-bit PNG."""
    if logits.shape[0] > 256:
        raise ValueError(f"{logits.shape[0]} classes do not fit an 8-bit mask PNG")
    if tuple(logits.shape[-2:]) != size:
        logits = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    mask = logits.argmax(dim=0).to(torch.uint8).cpu().numpy()
    # many small files: no fsync each (a crash leaves the earlier masks or none, never a half-written one)
    return atomic_write(path, lambda temporary: Image.fromarray(mask).save(temporary, format="PNG"), fsync=False)


def _plot_overlays(
    images: Sequence[tuple[Tensor, str]], masks: Sequence[Path], names: Sequence[str], out_path: Path
) -> Path | None:
    """The ``(image (3, H, W) in [0, 1], name)`` pairs with their predicted masks drawn over them (foreground classes
    coloured), one column each."""
    if not images:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(images), figsize=(3.0 * len(images), 3.4), squeeze=False)
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for axis, (shown, name), mask_path in zip(axes[0], images, masks, strict=True):
        mask = np.asarray(Image.open(mask_path))
        overlay = np.zeros((*mask.shape, 4))
        for index in np.unique(mask):
            if index > 0:  # class 0 is the background
                overlay[mask == index] = (*colours(int(index) % colours.N)[:3], 0.45)
        axis.imshow(shown.permute(1, 2, 0).numpy())
        axis.imshow(overlay)
        present = [names[int(i)] for i in np.unique(mask) if i > 0]
        axis.set_title(f"{Path(name).name}\n{', '.join(present) or 'background only'}", fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    return save_figure(figure, out_path, dpi=90)
