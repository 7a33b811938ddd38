"""Explanations of a tuned model: which patches, frequencies and symmetries it relies on.

``fftprompt-explain run_dir=RUN images=test:8`` (or :func:`explain`) reloads a finished run
(:func:`fftprompt.rundir.load_run`) and writes PNG figures and ``explain.md`` under ``RUN/explain`` unless told
otherwise. The parts: :mod:`.rollout` (attention rollout, generator cross-attention), :mod:`.attribution`
(integrated gradients over the frequency maps), :mod:`.profiles` (per-class feature means), :mod:`.figures`,
:mod:`.report` (:func:`explain_model`, the markdown) and :mod:`.images` (the ``images=`` argument). See
``docs/explain.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fftprompt.explain.attribution import ATTRIBUTION_GROUPS, Attribution, Baseline, integrated_gradients
from fftprompt.explain.images import load_images
from fftprompt.explain.profiles import ClassProfiles, class_profiles
from fftprompt.explain.report import explain_model
from fftprompt.explain.rollout import (
    AttentionRollout,
    attention_rollout,
    capture_attention,
    prompt_attention,
    rollout_matrix,
)
from fftprompt.rundir import load_run
from fftprompt.runfiles import EXPLAIN_DIR
from fftprompt.spectral import FrequencyFeatures

__all__ = [
    "ATTRIBUTION_GROUPS",
    "AttentionRollout",
    "Attribution",
    "ClassProfiles",
    "attention_rollout",
    "capture_attention",
    "class_profiles",
    "explain",
    "explain_model",
    "integrated_gradients",
    "prompt_attention",
    "rollout_matrix",
]


def explain(
    run_dir: str | Path,
    images: str | Path | Sequence[str | Path] = "test:8",
    out_dir: str | Path | None = None,
    *,
    ig_steps: int = 64,
    baseline: Baseline = "zero",
    profiles: bool = True,
    profile_images: int | None = None,
    data_root: str | Path | None = None,
    device: str = "cpu",
    dpi: int = 80,
    backbone: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Explains a finished run on a few images: figures and ``explain.md`` (see :func:`explain_model`).

    The images are prepared by the run's input pipeline (its preprocessing filter applied, if it has one): the
    explanations are of what the model sees.

    Args:
        run_dir: Directory written by ``fftprompt-train``.
        images: Image paths, a glob, a folder, a list of these, or ``"<split>:<count>"`` (e.g. ``"test:8"``:
            that many images evenly spaced over the run's test split, with their labels).
        out_dir: Output folder; default ``run_dir/explain``.
        ig_steps: Integrated-gradients quadrature nodes.
        baseline: Integrated-gradients baseline, ``"zero"`` or ``"mean"``.
        profiles: Draw per-class symmetry/orientation profiles over the run's test split (needs its data).
        profile_images: At most this many test images for the profiles (None: all).
        data_root: Data root instead of the one recorded in the run.
        device: Device to run on.
        dpi: Resolution of the PNGs.
        backbone: ``{"checkpoint_path": file}``: the run's backbone weights file, moved (same SHA256).

    Returns:
        Name -> written file, as :func:`explain_model`.
    """
    run = load_run(run_dir, data_root=data_root, device=device, backbone=backbone)
    batch, targets, captions, description = load_images(images, run)
    batch = run.pipeline.prepare(batch.to(device))
    if run.pipeline.preprocess is not None:
        description += f" Filtered by the run's preprocessing {run.pipeline.preprocess!r}."
    notes = [f"Run: `{run.run_dir}`. Images: {description}"]
    try:  # file datasets scan their root for the class names
        class_names: list[str] | None = run.datamodule.class_names
    except ValueError as error:
        if profiles:
            raise ValueError(
                f"{error}\n(class profiles need the run's data: pass data_root= or profiles=false)"
            ) from error
        class_names = None
        notes.append(f"Class names unavailable (the run's data could not be read: {str(error).splitlines()[0]}).")
    profile = None
    if profiles:
        model = run.model
        features = model.features or FrequencyFeatures(patch_size=model.backbone.patch_size).to(device)
        loader = ((run.pipeline.prepare(x.to(device)), y) for x, y in run.datamodule.test_dataloader())
        profile = class_profiles(features, loader, run.datamodule.class_names, max_images=profile_images)
    return explain_model(
        run.model,
        batch,
        Path(out_dir) if out_dir is not None else run.run_dir / EXPLAIN_DIR,
        mean=run.datamodule.mean,
        std=run.datamodule.std,
        labels=targets,
        captions=captions,
        class_names=class_names,
        ig_steps=ig_steps,
        baseline=baseline,
        profiles=profile,
        title=f"Explanations of {run.run_dir.name}",
        notes=notes,
        dpi=dpi,
    )
