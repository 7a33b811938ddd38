"""The fine-tuning methods the project compares: their names, table labels and the config options that make them,
and the real sample datasets the comparisons train them on.

``fftprompt-ablate`` trains them at matched parameter budgets, ``fftprompt-robustness`` under shifts and
corruptions, and ``fftprompt-bench methods`` times them side by side; all name and label them from here, so a method
reads the same in every table.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COMPARISON_OVERRIDES",
    "METHOD_LABELS",
    "SAMPLE_DATASETS",
    "TRAINED_METHODS",
    "Method",
    "method_label",
    "method_of",
    "sample_data_overrides",
]


@dataclass(frozen=True)
class Method:
    """One method as ``fftprompt-train`` builds it.

    Attributes:
        label: Its name in tables and figures.
        prompt: Option of the ``prompt`` config group (``configs/prompt/<prompt>.yaml``).
        adapter: Option of the ``adapter`` config group.
    """

    label: str
    prompt: str
    adapter: str


# every method fftprompt-train can make, in the order of the tables
TRAINED_METHODS: dict[str, Method] = {
    "linear_probe": Method("linear probe", prompt="none", adapter="none"),
    "vpt_shallow": Method("VPT shallow", prompt="vpt", adapter="none"),
    "vpt_deep": Method("VPT deep", prompt="vpt_deep", adapter="none"),
    "vfpt": Method("VFPT", prompt="vfpt", adapter="none"),
    "vapt": Method("VAPT", prompt="vapt", adapter="none"),
    "fft_shallow": Method("fft prompts shallow", prompt="fft", adapter="none"),
    "fft_deep": Method("fft prompts deep", prompt="fft_deep", adapter="none"),
    "fourierft": Method("FourierFT", prompt="none", adapter="fourierft"),
    "fft_fourierft": Method("fft prompts + FourierFT", prompt="fft", adapter="fourierft"),
}
METHOD_LABELS: dict[str, str] = {name: method.label for name, method in TRAINED_METHODS.items()}

# the prompt option each prompt class builds, shallow or deep (the class names a run's config.yaml records)
_PROMPT_OPTIONS: dict[tuple[str, bool], str] = {
    ("NoPrompt", False): "none",
    ("VPTPrompt", False): "vpt",
    ("VPTPrompt", True): "vpt_deep",
    ("VFPTPrompt", True): "vfpt",
    ("VAPTPrompt", True): "vapt",
    ("FrequencyPrompt", False): "fft",
    ("FrequencyPrompt", True): "fft_deep",
}


def method_of(prompt_class: str, deep: bool, adapted: bool) -> str | None:
    """The method (a key of :data:`TRAINED_METHODS`) a run with this prompt class and FourierFT or not trained, or
    None when it is none of them (e.g. shallow VFPT)."""
    prompt = _PROMPT_OPTIONS.get((prompt_class, bool(deep) and prompt_class != "NoPrompt"))
    adapter = "fourierft" if adapted else "none"
    for name, method in TRAINED_METHODS.items():
        if (method.prompt, method.adapter) == (prompt, adapter):
            return name
    return None


def method_label(prompt_class: str, deep: bool, adapted: bool) -> str:
    """The table label of a run with this prompt class and FourierFT or not: a method's label from
    :data:`TRAINED_METHODS`; other combinations join the prompt's label (or its class name with ``shallow``/``deep``
    when no method uses that prompt) and ``+ FourierFT`` (e.g. ``"VPT deep + FourierFT"``, ``"VFPTPrompt
    shallow"``)."""
    name = method_of(prompt_class, deep, adapted)
    if name is not None:
        return METHOD_LABELS[name]
    prompt_only = method_of(prompt_class, deep, False)
    prompt = METHOD_LABELS[prompt_only] if prompt_only else f"{prompt_class} {'deep' if deep else 'shallow'}"
    return f"{prompt} + FourierFT" if adapted else prompt


# Hydra overrides of every run of a comparison (fftprompt-ablate, fftprompt-robustness): configs/mode/comparison.yaml
# (no logger, no checkpoints, no validation loop, no progress bar or model summary, no frequency-map figures, and a
# run directory that the command itself manages)
COMPARISON_OVERRIDES = ("mode=comparison",)


# the real datasets of the comparisons: the folder of a sample-data root each lives in (DTD's layout, MedMNIST's npz)
SAMPLE_DATASETS = {"dtd": "dtd_300", "breastmnist": "medmnist"}


def sample_data_overrides(dataset: str, data_root: Path | None, image_size: int, batch_size: int) -> tuple[str, ...]:
    """Hydra overrides that train on ``dataset`` (a key of :data:`SAMPLE_DATASETS`) from a sample-data root (the
    folder holding ``dtd_300/`` and ``medmnist/breastmnist.npz``), images loaded in the main process."""
    if data_root is None:
        raise ValueError(
            f"dataset {dataset!r} needs the sample data: pass --data-root or set FFTPROMPT_SAMPLE_DATA (the folder "
            "holding dtd_300/ and medmnist/breastmnist.npz)"
        )
    if dataset not in SAMPLE_DATASETS:
        raise ValueError(f"dataset {dataset!r} is not one of the sample datasets {list(SAMPLE_DATASETS)}")
    root = Path(data_root) / SAMPLE_DATASETS[dataset]
    chosen = ("data=dtd",) if dataset == "dtd" else ("data=medmnist",)
    subset = ("data.subset=breastmnist",) if dataset == "breastmnist" else ()
    size = (f"data.image_size={image_size}", f"data.batch_size={batch_size}", "data.num_workers=0")
    return (*chosen, f"data.root={root}", *subset, *size)
