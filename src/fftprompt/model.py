"""PromptedViT: a frozen timm ViT with prompt tokens, optional FourierFT deltas and a task head.

Token order: ``[prefix tokens (CLS, distillation, registers)] [P prompts] [h * w patch tokens]``. Prompts are
inserted after timm's positional embedding (they carry none, as in VPT); deep prompts replace the prompt slots at the
input of every block, so the sequence length stays constant. The positions are owned by
:class:`fftprompt.tokens.TokenLayout` (:meth:`PromptedViT.token_layout`), and :func:`fftprompt.tokens.pool` reads the
class token, the mean of the patch tokens, the mean of the prompt tokens or the class token and prompt mean side by
side. With ``NoPrompt`` the model computes exactly the backbone's ``forward_features``.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fftprompt.backbone import Backbone, create_backbone
from fftprompt.fourierft import FourierFTConfig, inject_fourierft
from fftprompt.heads import ClassificationHead, LinearDecoder, PUPDecoder
from fftprompt.prompts import FrequencyPrompt, ModelDims, NoPrompt, PromptSource, VFPTPrompt, VPTPrompt
from fftprompt.runfiles import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from fftprompt.spectral import FrequencyFeatures, FrequencyMaps
from fftprompt.tokens import Pooling, TokenLayout, check_pooling, pool, pooled_width
from fftprompt.utils import Task, atomic_write, check_choice
from fftprompt.vapt import VAPTPrompt

__all__ = ["PromptedViT", "create_model", "frozen_fingerprint", "load_model", "read_description"]

_FORMAT = "fftprompt-adapter"
_FORMAT_VERSION = 1
_GROUPS = ("prompt", "adapter", "head")
# the only classes an adapter.json may name; nothing else is ever instantiated from a checkpoint
_PROMPT_CLASSES: dict[str, type[PromptSource]] = {
    cls.__name__: cls for cls in (NoPrompt, VPTPrompt, VFPTPrompt, FrequencyPrompt, VAPTPrompt)
}
_HEAD_CLASSES: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (ClassificationHead, LinearDecoder, PUPDecoder)
}
_FEATURE_SETTINGS = (
    "patch_size",
    "window",
    "orientation_bins",
    "radial_bins",
    "global_symmetry",
    "groups",
    "statistics_scales",
)


class PromptedViT(nn.Module):
    """A frozen ViT with prompts, optional FourierFT deltas and a trainable head.

    Args:
        backbone: The frozen backbone (kept in ``eval()`` even in ``model.train()``).
        features: Frequency feature extractor with the backbone's patch size, or None. Maps are computed under
            ``torch.no_grad`` in float32 (they depend only on the images) when the prompt or head reads them.
        prompt: The prompt source (``NoPrompt`` for none).
        head: ``ClassificationHead`` (pooled ``(B, D)``, ``(B, 2D)`` for ``cls+prompt``) or a segmentation decoder
            (grid ``(B, D, h, w)``).
        adapter: FourierFT settings; injected into the backbone's linear layers when given.
        pooling: ``"cls"`` (class token; timm's average of class and distillation token for distilled DeiT),
            ``"mean"`` (mean of the patch tokens), ``"prompt"`` (mean of the prompt tokens' outputs) or
            ``"cls+prompt"`` (both, concatenated: ``2D`` wide); see :mod:`fftprompt.tokens`. timm's ``fc_norm``
            follows each readout, as in ``forward_head``. Classification only (segmentation reads the patch grid).
        task: ``"classification"`` or ``"segmentation"``.

    Attributes:
        class_names: Names of the head's classes in label order, when known (runs set them from the data); recorded
            in ``adapter.json`` and in Lightning checkpoints so that evaluation can check the data's classes.
    """

    def __init__(
        self,
        backbone: Backbone,
        features: FrequencyFeatures | None,
        prompt: PromptSource,
        head: nn.Module,
        adapter: FourierFTConfig | None = None,
        pooling: Pooling = "cls",
        task: Task = "classification",
    ) -> None:
        super().__init__()
        check_choice("pooling", pooling, Pooling)
        check_choice("task", task, Task)
        if task == "classification":
            check_pooling(backbone.token_layout(num_prompt_tokens=prompt.num_tokens), pooling)
            width = pooled_width(pooling, backbone.embed_dim)
            head_width = (getattr(head, "config", None) or {}).get("embed_dim")
            if head_width is not None and head_width != width:
                raise ValueError(
                    f"{type(head).__name__}.embed_dim={head_width}; pooling={pooling!r} gives {width}-wide features: "
                    f"build the head with embed_dim={width} (create_model does)"
                )
        if features is not None and features.patch_size != backbone.patch_size:
            raise ValueError(
                f"features.patch_size={features.patch_size} differs from the backbone's patch size "
                f"{backbone.patch_size}"
            )
        needs_maps = [name for name, part in (("prompt", prompt), ("head", head)) if _requires_maps(part)]
        if needs_maps and features is None:
            raise ValueError(f"{' and '.join(needs_maps)} read frequency maps: pass features=FrequencyFeatures(...)")
        if prompt.dims.embed_dim != backbone.embed_dim:
            raise ValueError(
                f"prompt built for embed_dim={prompt.dims.embed_dim}; "
                f"backbone {backbone.name!r} has embed_dim={backbone.embed_dim}"
            )
        if prompt.deep and prompt.dims.num_layers != backbone.num_blocks:
            raise ValueError(
                f"deep prompt built for {prompt.dims.num_layers} layers; backbone has {backbone.num_blocks} blocks"
            )
        head_maps = getattr(head, "feature_channels", 0)
        if head_maps and features is not None and head_maps != features.num_channels:
            raise ValueError(
                f"{type(head).__name__}.feature_channels={head_maps}; the features give {features.num_channels}"
            )
        self.backbone = backbone
        self.features = features
        self.prompt = prompt
        self.head = head
        self.pooling: Pooling = pooling
        self.task: Task = task
        self.adapter_config = adapter
        self.class_names: list[str] | None = None
        self.adapted_modules: list[str] = []
        if adapter is not None:
            if any("fourierft" in name for name, _ in backbone.model.named_parameters()):
                raise ValueError(
                    f"backbone {backbone.name!r} already holds FourierFT layers (injection changes it in place): "
                    "create a new backbone for each adapted model"
                )
            self.adapted_modules = list(inject_fourierft(backbone.model, adapter))
            stray = [n for n, p in backbone.model.named_parameters() if p.requires_grad and "fourierft" not in n]
            if stray:
                raise ValueError(f"FourierFT injection left non-adapter backbone parameters trainable: {stray[:5]}")

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.num_tokens

    def token_layout(self, grid: tuple[int, int] | None = None) -> TokenLayout:
        """Positions of the prefix, prompt and patch tokens for a patch grid ``(h, w)`` (default: the backbone's)."""
        return self.backbone.token_layout(grid, self.prompt.num_tokens)

    def train(self, mode: bool = True) -> PromptedViT:
        super().train(mode)
        self.backbone.train(mode)  # keeps the timm model itself in eval()
        return self

    def compute_maps(self, images: Tensor) -> FrequencyMaps | None:
        """Frequency maps of ``(B, C, H, W)`` images (no gradient, float32), or None without features."""
        if self.features is None:
            return None
        with torch.no_grad():
            return self.features(images.float())

    def _needs_maps(self) -> bool:
        return _requires_maps(self.prompt) or _requires_maps(self.head)

    def _forward_tokens(self, images: Tensor, maps: FrequencyMaps | None) -> tuple[Tensor, TokenLayout]:
        """Runs the blocks with prompts: ``(B, C, H, W) -> (B, prefix + P + h * w, D)`` normed tokens, layout."""
        backbone = self.backbone
        x, grid = backbone.embed(images)
        layout = self.token_layout(grid)
        if layout.num_prompt_tokens == 0:
            return backbone.norm(backbone.blocks(x)), layout
        if maps is not None and tuple(maps.log_magnitude.shape[2:4]) != grid:
            raise ValueError(f"frequency maps grid {tuple(maps.log_magnitude.shape[2:4])} != token grid {grid}")
        prefix, patches = x[:, layout.prefix], x[:, layout.num_prefix_tokens :]
        prompts = self.prompt(images, maps, patches)
        prompts = prompts.to(x.dtype)
        # per-layer sources (VAPT) return the first block's prompts and make each later block's from its input
        per_layer = self.prompt.deep and self.prompt.per_layer
        first = prompts[0] if self.prompt.deep and not per_layer else prompts
        x = torch.cat([prefix, first, patches], dim=1)
        for index, block in enumerate(backbone.blocks):
            if self.prompt.deep and index > 0:
                if per_layer:
                    fresh = self.prompt.prompts_for_layer(index, x[:, layout.patches]).to(x.dtype)
                else:
                    fresh = prompts[index]
                x = torch.cat([x[:, layout.prefix], fresh, x[:, layout.patches]], dim=1)
            x = block(x)
        return backbone.norm(x), layout

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, prefix + P + h * w, D)``: all tokens after the final norm."""
        maps = self.compute_maps(images) if _requires_maps(self.prompt) else None
        return self._forward_tokens(images, maps)[0]

    def forward_pooled(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, D)`` (``(B, 2D)`` for ``cls+prompt``): pooled features, for ``cls`` and ``mean``
        as timm's ``forward_head(pre_logits=True)``."""
        maps = self.compute_maps(images) if _requires_maps(self.prompt) else None
        return self._pool(*self._forward_tokens(images, maps))

    def forward_patch_tokens(self, images: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, D, h, w)``: normed patch tokens as a grid (prompts and prefix dropped)."""
        maps = self.compute_maps(images) if _requires_maps(self.prompt) else None
        tokens, layout = self._forward_tokens(images, maps)
        return layout.patch_grid(tokens)

    def _pool(self, tokens: Tensor, layout: TokenLayout) -> Tensor:
        return pool(tokens, layout, self.pooling, norm=self.backbone.fc_norm)

    def forward(self, images: Tensor, *, maps: FrequencyMaps | None = None) -> Tensor:
        """``(B, C, H, W) ->`` ``(B, K)`` class logits or ``(B, K, H, W)`` mask logits.

        Args:
            images: ``(B, C, H, W)`` normalised images.
            maps: Frequency maps to use instead of ``compute_maps(images)`` (keyword only), e.g. maps whose
                ``compact()`` channels are interpolated for integrated gradients (:mod:`fftprompt.explain`), in which
                case gradients flow into them. Only for models whose prompt or head reads maps.
        """
        if maps is not None and not self._needs_maps():
            raise ValueError(
                f"maps= given but neither the prompt ({type(self.prompt).__name__}) nor the head "
                f"({type(self.head).__name__}) reads frequency maps"
            )
        if maps is None:
            maps = self.compute_maps(images) if self._needs_maps() else None
        tokens, layout = self._forward_tokens(images, maps if _requires_maps(self.prompt) else None)
        if self.task == "classification":
            return self.head(self._pool(tokens, layout))
        compact = maps.compact() if maps is not None and _requires_maps(self.head) else None
        return self.head(layout.patch_grid(tokens), compact, output_size=tuple(images.shape[-2:]))

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: ``"prompt"``, ``"adapter"`` (FourierFT coefficients) and ``"head"``."""
        return {name: [p for _, p in params] for name, params in self._named_trainable().items()}

    def _named_trainable(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        return {
            "prompt": [(n, p) for n, p in self.prompt.named_parameters() if p.requires_grad],
            "adapter": [(n, p) for n, p in self.backbone.model.named_parameters() if p.requires_grad],
            "head": [(n, p) for n, p in self.head.named_parameters() if p.requires_grad],
        }

    def num_trainable_parameters(self) -> int:
        """Number of trainable parameters (prompt, adapter and head)."""
        return sum(p.numel() for group in self.trainable_parameters().values() for p in group)

    def num_total_parameters(self) -> int:
        """Number of parameters of the whole model, frozen ones included."""
        return sum(p.numel() for p in self.parameters())

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """What :meth:`save_trainable` stores: trainable parameters and the head's and prompt's buffers
        (e.g. BatchNorm statistics), keyed ``"prompt.*"``, ``"adapter.*"`` (module path in the timm model),
        ``"head.*"``."""
        state = {f"prompt.{n}": t for n, t in self.prompt.state_dict().items()}
        state.update({f"adapter.{n}": p for n, p in self._named_trainable()["adapter"]})
        state.update({f"head.{n}": t for n, t in self.head.state_dict().items()})
        return {k: v.detach() for k, v in state.items()}

    def describe(self) -> dict[str, Any]:
        """JSON description written to ``adapter.json``: enough to rebuild the trainable parts on the backbone."""
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "fftprompt_version": version("fftprompt"),
            "backbone": {
                "name": self.backbone.name,
                "config": self.backbone.config,
                "embed_dim": self.backbone.embed_dim,
                "patch_size": self.backbone.patch_size,
                "num_blocks": self.backbone.num_blocks,
                "num_prefix_tokens": self.backbone.num_prefix_tokens,
            },
            "task": self.task,
            "pooling": self.pooling,
            "features": None
            if self.features is None
            else {"class": "FrequencyFeatures", **_features_config(self.features)},
            "prompt": {"class": type(self.prompt).__name__, "config": self.prompt.config},
            "head": {"class": type(self.head).__name__, "config": getattr(self.head, "config", None)},
            "adapter": None
            if self.adapter_config is None
            else {"class": "FourierFTConfig", **self.adapter_config.to_dict()},
            "class_names": None if self.class_names is None else list(self.class_names),
        }

    def save_trainable(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """Writes ``adapter.safetensors`` (trainable tensors only) and ``adapter.json`` into directory ``path``.

        Each file is written to a temporary file in the same directory and moved into place (``os.replace``), so a
        crash never leaves a half-written file under the final name.

        Args:
            path: Output directory (created if missing).
            overwrite: Replace existing files; otherwise they raise ``FileExistsError``.

        Returns:
            The directory.
        """
        directory = Path(path)
        weights_path, config_path = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
        if not overwrite:
            for existing in (weights_path, config_path):
                if existing.exists():
                    raise FileExistsError(f"{existing} exists; pass overwrite=True to replace it")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.cpu().contiguous().clone() for k, v in self.trainable_state_dict().items()}
        description = self.describe()
        description["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
        text = json.dumps(description, indent=2, sort_keys=True)
        atomic_write(weights_path, lambda temporary: save_file(tensors, temporary, metadata={"format": _FORMAT}))
        atomic_write(config_path, lambda temporary: temporary.write_text(text + "\n", encoding="utf-8"))
        return directory

    def load_trainable(self, path: str | os.PathLike[str]) -> None:
        """Loads tensors written by :meth:`save_trainable` into this model (in place).

        Args:
            path: Directory holding ``adapter.safetensors`` and ``adapter.json`` (or the path of either file).

        Raises:
            ValueError: naming the mismatch when the checkpoint was written for another backbone, prompt, head or
                adapter, or when keys are missing, unexpected or of another shape.
        """
        description, tensors, weights_path = _read_adapter(path)
        self._check_description(description, weights_path)
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{weights_path}: missing keys {missing}, unexpected keys {unexpected}")
        shapes = [
            f"{k}: {tuple(tensors[k].shape)} vs {tuple(v.shape)}"
            for k, v in expected.items()
            if tensors[k].shape != v.shape
        ]
        if shapes:
            raise ValueError(f"{weights_path}: shape mismatch (checkpoint vs model): {shapes}")
        adapter_params = dict(self._named_trainable()["adapter"])
        with torch.no_grad():
            self.prompt.load_state_dict({k[len("prompt.") :]: v for k, v in tensors.items() if k.startswith("prompt.")})
            self.head.load_state_dict({k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")})
            for key, value in tensors.items():
                if key.startswith("adapter."):
                    adapter_params[key[len("adapter.") :]].copy_(value)

    def _check_description(self, description: dict[str, Any], source: Path) -> None:
        mine = self.describe()
        checks = [
            ("backbone name", description.get("backbone", {}).get("name"), mine["backbone"]["name"]),
            ("backbone embed_dim", description.get("backbone", {}).get("embed_dim"), mine["backbone"]["embed_dim"]),
            ("task", description.get("task"), mine["task"]),
            ("pooling", description.get("pooling"), mine["pooling"]),
            ("prompt class", (description.get("prompt") or {}).get("class"), mine["prompt"]["class"]),
            ("head class", (description.get("head") or {}).get("class"), mine["head"]["class"]),
            ("adapter", description.get("adapter"), mine["adapter"]),
            ("features", _features_settings(description.get("features")), _features_settings(mine["features"])),
        ]
        for what, saved, current in checks:
            if saved != current:
                raise ValueError(f"{source}: {what} is {saved!r} in the checkpoint but {current!r} in this model")


def frozen_fingerprint(module: nn.Module) -> float:
    """Sum of ``|w|`` over every frozen parameter: cheap to compute, differs for differently initialised backbones."""
    total = torch.zeros((), dtype=torch.float64)
    for parameter in module.parameters():
        if not parameter.requires_grad:
            total += parameter.detach().to(torch.float64).abs().sum().cpu()
    return float(total)


def create_model(
    backbone: Backbone | str,
    num_classes: int,
    *,
    task: Task = "classification",
    prompt: PromptSource | Callable[[ModelDims], PromptSource] | None = None,
    features: FrequencyFeatures | Callable[..., FrequencyFeatures] | None = None,
    head: nn.Module | Callable[..., nn.Module] | None = None,
    adapter: FourierFTConfig | None = None,
    pooling: Pooling = "cls",
) -> PromptedViT:
    """Builds a :class:`PromptedViT`, resolving the parts that need facts about the backbone.

    Args:
        backbone: A :class:`Backbone`, or a timm model name given to :func:`create_backbone` (no weights).
        num_classes: Classes ``K`` of the head.
        task: ``"classification"`` or ``"segmentation"``.
        prompt: A prompt source, a callable ``dims -> PromptSource`` (e.g. ``functools.partial(VPTPrompt,
            num_tokens=10)``, or a Hydra ``_partial_: true`` config), or None for no prompts.
        features: A ``FrequencyFeatures``, a callable called with ``patch_size=backbone.patch_size``, or None.
        head: A head module; a callable called with ``embed_dim``, ``num_classes=K`` (plus ``patch_size=p`` for
            segmentation); or None for ``ClassificationHead`` / ``LinearDecoder``. ``embed_dim`` is the width of
            what the head reads: the pooled features' (``D``, ``2D`` for ``cls+prompt``) for classification, the
            tokens' ``D`` for segmentation.
        adapter: FourierFT settings, or None.
        pooling: ``"cls"``, ``"mean"``, ``"prompt"`` or ``"cls+prompt"`` (:mod:`fftprompt.tokens`).

    Returns:
        The model, with a frozen backbone.
    """
    check_choice("task", task, Task)
    if isinstance(backbone, str):
        backbone = create_backbone(backbone)
    if features is not None and not isinstance(features, nn.Module):
        features = features(patch_size=backbone.patch_size)
    dims = ModelDims.of(backbone, features)
    if prompt is None:
        prompt = NoPrompt(dims)
    elif not isinstance(prompt, nn.Module):
        prompt = prompt(dims)
    if not isinstance(prompt, PromptSource):
        raise ValueError(f"prompt built a {type(prompt).__name__}; expected a fftprompt PromptSource")
    if head is None or not isinstance(head, nn.Module):
        builder = head or (ClassificationHead if task == "classification" else LinearDecoder)
        head_kwargs: dict[str, Any] = {"embed_dim": backbone.embed_dim, "num_classes": num_classes}
        if task == "segmentation":
            head_kwargs["patch_size"] = backbone.patch_size
        else:
            head_kwargs["embed_dim"] = pooled_width(pooling, backbone.embed_dim)
        head = builder(**head_kwargs)
    return PromptedViT(backbone, features, prompt, head, adapter=adapter, pooling=pooling, task=task)


def load_model(path: str | os.PathLike[str], backbone: Backbone | None = None) -> PromptedViT:
    """Rebuilds a model from ``adapter.json`` and loads ``adapter.safetensors``.

    Only fftprompt's own classes (an allow-list) are instantiated, with the recorded keyword arguments.

    Args:
        path: Directory written by :meth:`PromptedViT.save_trainable` (or the path of either file).
        backbone: The backbone to attach to; default: rebuilt with the recorded :func:`create_backbone` arguments
            (which fetch pretrained or local weights again as recorded).

    Returns:
        The model with the saved trainable tensors loaded.
    """
    description, _, weights_path = _read_adapter(path)
    if backbone is None:
        config = dict(description["backbone"].get("config") or {})
        if "name" not in config:
            raise ValueError(f"{weights_path}: the recorded backbone cannot be rebuilt; pass backbone=")
        if not config.get("pretrained") and config.get("checkpoint_path") is None:
            raise ValueError(
                f"{weights_path}: backbone {config['name']!r} was created without weights (pretrained=False, no "
                "checkpoint_path), so a rebuilt one would be randomly initialised; pass backbone="
            )
        backbone = create_backbone(**config)
    prompt_class = _allowed(_PROMPT_CLASSES, description["prompt"]["class"], "prompt", weights_path)
    head_class = _allowed(_HEAD_CLASSES, description["head"]["class"], "head", weights_path)
    prompt_config = dict(description["prompt"]["config"] or {})
    head_config = dict(description["head"]["config"] or {})
    try:
        features = None
        if description.get("features") is not None:
            settings = {k: v for k, v in description["features"].items() if k != "class"}
            features = FrequencyFeatures(**settings)
        adapter = None
        if description.get("adapter") is not None:
            settings = {k: v for k, v in description["adapter"].items() if k != "class"}
            adapter = FourierFTConfig.from_dict(settings)
        model = create_model(
            backbone,
            num_classes=int(head_config["num_classes"]),
            task=description["task"],
            prompt=lambda dims: prompt_class(dims, **prompt_config),
            features=features,
            head=head_class(**head_config),
            adapter=adapter,
            pooling=description["pooling"],
        )
    except (TypeError, KeyError) as error:  # arguments the recorded classes do not take, or missing entries
        raise ValueError(
            f"{weights_path.parent / ADAPTER_CONFIG}: the recorded features, adapter, prompt ({prompt_class.__name__}) "
            f"or head ({head_class.__name__}) settings do not fit their class: {error}"
        ) from error
    model.load_trainable(path)
    names = description.get("class_names")  # absent from adapters written before class names were recorded
    model.class_names = None if names is None else [str(name) for name in names]
    return model


def read_description(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``adapter.json`` written by :meth:`PromptedViT.save_trainable` (``path``: its directory or either file),
    checked for format and version; the tensors are not read."""
    path = Path(path)
    config_path = (path.parent if path.name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) else path) / ADAPTER_CONFIG
    if not config_path.is_file():
        raise ValueError(f"{config_path} not found; expected the output of PromptedViT.save_trainable")
    try:
        description = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from error
    if not isinstance(description, dict) or description.get("format") != _FORMAT:
        raise ValueError(f"{config_path} is not an fftprompt adapter config (format != {_FORMAT!r})")
    if description.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: format_version {description.get('format_version')!r}; expected {_FORMAT_VERSION}"
        )
    return description


def _read_adapter(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor], Path]:
    path = Path(path)
    directory = path.parent if path.name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG) else path
    weights_path, config_path = directory / ADAPTER_WEIGHTS, directory / ADAPTER_CONFIG
    for required in (weights_path, config_path):
        if not required.is_file():
            raise ValueError(f"{required} not found; expected the output of PromptedViT.save_trainable")
    description = read_description(directory)
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:  # SafetensorError for bad headers/truncation, OSError, ... depending on the damage
        raise ValueError(
            f"{weights_path} is not a readable safetensors file ({type(error).__name__}: {error}); it is truncated "
            "or corrupted: write it again with PromptedViT.save_trainable"
        ) from error
    return description, tensors, weights_path


def _allowed(classes: dict[str, type], name: Any, what: str, source: Path) -> type:
    if name not in classes:
        raise ValueError(f"{source}: {what} class {name!r} is not one of {sorted(classes)}")
    return classes[name]


def _requires_maps(module: nn.Module) -> bool:
    return bool(getattr(module, "requires_maps", False))


def _features_settings(features: dict[str, Any] | None) -> dict[str, Any] | None:
    """A recorded features config with each setting it leaves out at ``FrequencyFeatures``' default (adapters record
    only the settings that existed when they were written, and leave ``statistics_scales`` out when empty)."""
    if features is None:
        return None
    parameters = inspect.signature(FrequencyFeatures.__init__).parameters
    defaults = {
        name: parameters[name].default
        for name in _FEATURE_SETTINGS
        if name in parameters and parameters[name].default is not inspect.Parameter.empty
    }
    return {key: list(value) if isinstance(value, tuple) else value for key, value in {**defaults, **features}.items()}


def _features_config(features: FrequencyFeatures) -> dict[str, Any]:
    """Constructor arguments of a FrequencyFeatures, read back from its attributes (``statistics_scales`` only when
    set, so that features without it are described as adapters written before it existed record them)."""
    parameters = inspect.signature(FrequencyFeatures.__init__).parameters
    attribute = {"window": "window_name"}
    config = {}
    for name in _FEATURE_SETTINGS:
        if name not in parameters:
            continue
        value = getattr(features, attribute.get(name, name))
        if name == "statistics_scales" and not value:
            continue
        config[name] = list(value) if isinstance(value, tuple) else value
    return config
