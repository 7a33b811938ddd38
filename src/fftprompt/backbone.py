"""Frozen timm Vision Transformers: creation, local or hub weights, and the token-level steps the model reuses.

This is the only module of fftprompt that imports timm. :class:`Backbone` wraps (never subclasses) a timm
``VisionTransformer`` (or a subclass such as DeiT's distilled model), keeps every base weight frozen and the model in
``eval()`` (dropout, drop-path and patch dropout off, as in VPT), and exposes the steps of timm's own
``forward_features`` so that :class:`fftprompt.model.PromptedViT` can insert prompts between them.

Pretrained weights come through timm's hub loading. When they are not in the local cache, the hub is asked once,
with a short timeout (:data:`HUB_PROBE_SECONDS`), before timm starts (:mod:`fftprompt.weights.hub`): offline (or
with ``HF_HUB_OFFLINE=1``) the error comes at once, with the way out (local weights or none), instead of after the
hub client's retries (minutes against a network that drops packets) and with no hint. Local weights files are read
by :mod:`fftprompt.weights.checkpoint` and adapted to the timm model here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import timm.data
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer, _cfg, checkpoint_filter_fn
from torch import Tensor, nn

from fftprompt.tokens import TokenLayout
from fftprompt.utils import atomic_write, to_plain
from fftprompt.weights import file_sha256, locate_weights
from fftprompt.weights.checkpoint import read_state_dict
from fftprompt.weights.hub import NO_WEIGHTS_HINT, check_hub_weights, is_download_error

__all__ = [
    "DEMO_MODEL",
    "HUB_PROBE_SECONDS",
    "Backbone",
    "classifier_config",
    "create_backbone",
    "create_classifier",
    "create_pretraining_vit",
    "load_backbone_checkpoint",
    "normalisation",
    "save_backbone_checkpoint",
    "stock_architecture",
]

DEMO_MODEL = "vit_demo_patch8"
# how long the one request that checks whether the Hugging Face hub answers may take (seconds)
HUB_PROBE_SECONDS = 10.0

# classifier weights of the checkpoint: the backbone has no classifier (fftprompt trains its own head)
_CLASSIFIER_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")
# fftprompt's pooling modes that a timm classifier computes, as timm's global_pool names them
_TIMM_GLOBAL_POOL = {"cls": "token", "mean": "avg"}
# create_backbone arguments that choose weights, not the architecture
_WEIGHTS_ARGUMENTS = ("name", "pretrained", "checkpoint_path", "checkpoint_sha256", "allow_missing_weights")


# The demo ViT, registered with timm under an honest name: ViT-Ti's head width (32 per head) and normalisation,
# 4 blocks of width 96, 8-pixel patches; no pretrained weights of timm's exist for it. timm's register_model reads
# the pretrained configs from a module variable named default_cfgs.
default_cfgs = generate_default_cfgs({f"{DEMO_MODEL}.untrained": _cfg(url="", mean=(0.5,) * 3, std=(0.5,) * 3)})
_DEMO_ARGS = {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
# Names registered above exist in a process that imported fftprompt only; exported configs name the stock timm
# entry that builds the same VisionTransformer from the same arguments (ViT-Ti shares the demo's head width and MLP).
_STOCK_ARCHITECTURES = {DEMO_MODEL: ("vit_tiny_patch16_224", _DEMO_ARGS)}


@register_model
def vit_demo_patch8(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """fftprompt's demo ViT (4 blocks, width 96, 3 heads, 8-pixel patches); ``**kwargs`` as timm's ViTs."""
    arguments = {**_DEMO_ARGS, **kwargs}
    return build_model_with_cfg(
        VisionTransformer, DEMO_MODEL, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **arguments
    )


class Backbone(nn.Module):
    """A frozen timm Vision Transformer.

    Args:
        model: A timm ``VisionTransformer`` (or subclass) built without a classifier (``num_classes=0``).
        name: The timm model name it was created from.
        config: JSON-serialisable arguments of :func:`create_backbone` that rebuild it (recorded in checkpoints).

    Attributes:
        model: The wrapped timm model, in ``eval()`` whatever ``train()`` is called with.
        embed_dim: Token width ``D``.
        patch_size: Side ``p`` of the square patches.
        num_prefix_tokens: Class, distillation and register tokens before the patch tokens.
        num_blocks: Number of transformer blocks ``L``.
        in_chans: Image channels expected.
        img_size: ``(H, W)`` the model was built for.
        grid_size: ``(h, w) = (H / p, W / p)``.
        mean: Per-channel normalisation mean of the model's data config.
        std: Per-channel normalisation std of the model's data config.
    """

    def __init__(self, model: nn.Module, name: str, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(model, VisionTransformer):
            raise ValueError(
                f"backbone {name!r} is a timm {type(model).__name__}; expected a VisionTransformer "
                "or a subclass of it (e.g. vit_*, deit_*)"
            )
        patch_h, patch_w = _pair(model.patch_embed.patch_size)
        if patch_h != patch_w:
            raise ValueError(f"backbone {name!r} has patch size {(patch_h, patch_w)}; expected square patches")
        self.model = model
        self.name = name
        self.config = dict(config or {"name": name})
        self.embed_dim = int(model.embed_dim)
        self.patch_size = int(patch_h)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.num_blocks = len(model.blocks)
        self.in_chans = int(model.in_chans)
        self.img_size = _pair(model.patch_embed.img_size)
        self.grid_size = _pair(model.patch_embed.grid_size)
        if any(side % self.patch_size for side in self.img_size) and not getattr(
            model.patch_embed, "dynamic_img_pad", False
        ):
            # timm's strided patch convolution would silently drop the last pixel rows and columns
            height, width = self.img_size
            lower = max(height // self.patch_size, 1) * self.patch_size
            raise ValueError(
                f"backbone {name!r}: img_size {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                f"use e.g. {lower} or {lower + self.patch_size} (data.image_size in the configs)"
            )
        self.has_class_token = model.cls_token is not None
        self.is_distilled = isinstance(model, VisionTransformerDistilled)
        self.mean, self.std = normalisation(model)
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Sets ``self.training`` only; the timm model always stays in ``eval()`` (frozen statistics, no dropout)."""
        self.training = mode
        self.model.eval()
        return self

    @property
    def blocks(self) -> nn.Sequential:
        """The transformer blocks, each ``(B, N, D) -> (B, N, D)``."""
        return self.model.blocks

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch embedding, prefix tokens and positional embedding, as timm's ``forward_features`` does them.

        Args:
            images: ``(B, C, H, W)`` normalised images.

        Returns:
            Tokens ``(B, num_prefix_tokens + h * w, D)`` (prefix tokens first) and the patch grid ``(h, w)``.
        """
        x = self.model.patch_embed(images)
        # dynamic_img_size models keep the grid (B, h, w, D) until _pos_embed flattens it
        grid = (int(x.shape[1]), int(x.shape[2])) if x.ndim == 4 else self.grid_size
        x = self.model._pos_embed(x)
        x = self.model.patch_drop(x)
        x = self.model.norm_pre(x)
        return x, grid

    def norm(self, tokens: Tensor) -> Tensor:
        """timm's final norm (identity for models that normalise after pooling): ``(B, N, D) -> (B, N, D)``."""
        return self.model.norm(tokens)

    def token_layout(self, grid: tuple[int, int] | None = None, num_prompt_tokens: int = 0) -> TokenLayout:
        """Where the prefix, ``num_prompt_tokens`` prompt and patch tokens sit in this model's token sequence.

        Args:
            grid: ``(h, w)`` of the patch tokens (default: :attr:`grid_size`; :meth:`embed` returns the actual one).
            num_prompt_tokens: ``P``, the prompt tokens inserted after the prefix.
        """
        # timm's prefix order: class token, then the distillation token (DeiT) or the registers
        class_tokens = (0, 1) if self.is_distilled else (0,) if self.has_class_token else ()
        grid = self.grid_size if grid is None else (int(grid[0]), int(grid[1]))
        return TokenLayout(self.num_prefix_tokens, num_prompt_tokens, grid, class_tokens)

    def fc_norm(self, pooled: Tensor) -> Tensor:
        """timm's norm after pooling (identity unless the model normalises there): ``(B, D) -> (B, D)``."""
        return self.model.fc_norm(pooled)

    def forward(self, images: Tensor) -> Tensor:
        """timm's ``forward_features``: ``(B, C, H, W) -> (B, num_prefix_tokens + h * w, D)``."""
        return self.model.forward_features(images)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, patch_size={self.patch_size}, blocks={self.num_blocks}"


def create_backbone(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    img_size: int | tuple[int, int] | None = None,
    checkpoint_sha256: str | None = None,
    allow_missing_weights: bool = False,
    **timm_kwargs: Any,
) -> Backbone:
    """Creates a frozen timm Vision Transformer.

    Args:
        name: timm model name, optionally with a pretrained tag (``"vit_base_patch16_224.augreg_in21k"``).
        pretrained: Load timm's pretrained weights through timm's own hub loading (needs the hub or its cache).
        checkpoint_path: Local weights (``.safetensors`` or a ``torch.save`` file) to load after creation; timm-style
            state dicts, optionally wrapped (``{"state_dict": ...}``, ``{"model": ...}``) or prefixed
            (``module.``, ``model.``). The positional embedding is resampled when ``img_size`` differs.
        img_size: Input size the model is built for (default: the model's own).
        checkpoint_sha256: The SHA256 ``checkpoint_path`` must have (a rebuilt run passes the recorded one): when
            the file moved, the shipped file of the same name with this SHA256 is taken
            (:func:`fftprompt.weights.locate_weights`); other bytes are refused.
        allow_missing_weights: Accept a ``checkpoint_path`` that lacks some of the model's weights (they keep their
            random initialisation; a warning lists them); by default that is an error naming them.
        **timm_kwargs: Further arguments of ``timm.create_model`` (``patch_size``, ``embed_dim``, ``depth``,
            ``reg_tokens``, ``global_pool``, ``dynamic_img_size``, ...). ``num_classes`` is always 0.

    Returns:
        The frozen backbone in ``eval()`` mode; its ``config`` records the arguments, with the checkpoint's SHA256.

    Raises:
        ValueError: for an unknown name, a model that is not a timm VisionTransformer, or a checkpoint none of
            whose weights match the model.
    """
    if "num_classes" in timm_kwargs:
        raise ValueError(
            "num_classes is not a backbone argument: the backbone has no classifier (the head is separate)"
        )
    if checkpoint_path is not None:
        checkpoint_path = locate_weights(checkpoint_path, checkpoint_sha256)
    model = _create_vit(
        name, pretrained, checkpoint_path, img_size, num_classes=0, allow_missing=allow_missing_weights, **timm_kwargs
    )
    config: dict[str, Any] = to_plain({"name": name, "pretrained": pretrained, "img_size": img_size, **timm_kwargs})
    if checkpoint_path is not None:
        config.update(checkpoint_path=str(checkpoint_path), checkpoint_sha256=file_sha256(checkpoint_path))
        if allow_missing_weights:
            config["allow_missing_weights"] = True
    # arguments JSON cannot hold (e.g. a norm_layer class) are not recorded: such a backbone is rebuilt by hand
    return Backbone(model, name, config=config if _is_json(config) else {"name": name})


def classifier_config(backbone: Backbone, num_classes: int, pooling: str) -> dict[str, Any]:
    """timm's ``config.json`` (hub format) of a timm classifier that pools and normalises as ``backbone`` does.

    The classifier is ``timm.create_model(config["architecture"], num_classes=K, **config["model_args"])``: the
    backbone's creation arguments, with ``global_pool`` (``"token"`` for ``pooling="cls"``, ``"avg"`` for the mean of
    the patch tokens) and ``fc_norm`` set so that its forward equals :func:`fftprompt.tokens.pool` (with
    :meth:`Backbone.fc_norm`) followed by a linear head. The architecture is one timm itself registers (fftprompt's
    own names become a stock ViT entry plus their arguments, see :func:`stock_architecture`), so that loading needs
    timm only, not ``import fftprompt``.

    Args:
        backbone: The frozen backbone.
        num_classes: Classes ``K`` of the head.
        pooling: ``"cls"`` or ``"mean"``.

    Raises:
        ValueError: For pooling that a plain timm classifier does not compute (distilled DeiT's two tokens,
            attention pooling, the prompt readouts ``prompt`` and ``cls+prompt``) or an unknown ``pooling``.
    """
    model = backbone.model
    if backbone.is_distilled:
        raise ValueError(
            f"backbone {backbone.name!r} is a distilled DeiT: fftprompt averages its class and distillation tokens "
            "into one head, which timm's two-head classifier does not compute"
        )
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError(f"backbone {backbone.name!r} pools with attention, which fftprompt's pooling does not use")
    if pooling not in _TIMM_GLOBAL_POOL:
        raise ValueError(
            f"pooling={pooling!r} has no timm classifier equivalent: timm pools the class token ('cls') or the mean "
            f"of the patch tokens ('mean'), expected one of {list(_TIMM_GLOBAL_POOL)}"
        )
    architecture, model_args = stock_architecture(backbone.name)
    recorded = {k: v for k, v in backbone.config.items() if k not in _WEIGHTS_ARGUMENTS}
    model_args.update({k: v for k, v in recorded.items() if v is not None})
    model_args.update(
        img_size=list(backbone.img_size),  # timm's default input size is the entry's, not the run's
        global_pool=_TIMM_GLOBAL_POOL[pooling],
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
    )
    data_config = timm.data.resolve_model_data_config(model)
    return {
        "architecture": architecture,
        "num_classes": int(num_classes),
        "num_features": backbone.embed_dim,
        "global_pool": model_args["global_pool"],
        "model_args": model_args,
        "pretrained_cfg": {
            "input_size": [backbone.in_chans, *backbone.img_size],
            "interpolation": str(data_config.get("interpolation", "bicubic")),
            "crop_pct": 1.0,
            "mean": list(backbone.mean),
            "std": list(backbone.std),
            "num_classes": int(num_classes),
        },
    }


def stock_architecture(name: str) -> tuple[str, dict[str, Any]]:
    """The timm entry (without pretrained tag) that a process without fftprompt can build, and the arguments that
    make it the architecture ``name`` names: ``("vit_tiny_patch16_224", {"patch_size": 8, ...})`` for the demo ViT,
    ``(name, {})`` for timm's own models."""
    architecture = name.split(".", 1)[0]
    if architecture in _STOCK_ARCHITECTURES:
        stock, arguments = _STOCK_ARCHITECTURES[architecture]
        return stock, dict(arguments)
    if timm.is_model(architecture) and _registered_here(architecture):
        raise ValueError(f"backbone {name!r} is registered by fftprompt and has no stock timm equivalent to export")
    return architecture, {}


def _registered_here(architecture: str) -> bool:
    entrypoint = timm.models.model_entrypoint(architecture)
    return str(getattr(entrypoint, "__module__", "")).split(".", 1)[0] == __name__.split(".", 1)[0]


def create_classifier(config: Mapping[str, Any], state_dict: Mapping[str, Tensor]) -> nn.Module:
    """The timm classifier that :func:`classifier_config`'s ``config`` describes, with ``state_dict`` loaded
    strictly (every key, no other), in ``eval()``."""
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as error:
        raise ValueError(f"the state dict does not fit timm's {config['architecture']!r}: {error}") from error
    return model.eval()


def create_pretraining_vit(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    img_size: int | tuple[int, int] | None = None,
    allow_missing_weights: bool = False,
    **timm_kwargs: Any,
) -> VisionTransformer:
    """A trainable timm Vision Transformer with a linear classifier of ``num_classes`` (0: none), for (pre)training
    it whole.

    Takes :func:`create_backbone`'s arguments (a ``backbone`` config with ``num_classes`` added): every parameter
    requires a gradient and the model is in ``train()`` mode. :func:`save_backbone_checkpoint` writes its weights
    without the classifier, in the form ``create_backbone(..., checkpoint_path=...)`` loads.

    Returns:
        The timm model: ``(B, C, H, W) -> (B, num_classes)``, or its pooled features ``(B, D)`` for 0 classes.
    """
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0: no classifier), got {num_classes}")
    model = _create_vit(
        name, pretrained, checkpoint_path, img_size, num_classes, allow_missing=allow_missing_weights, **timm_kwargs
    )
    model.requires_grad_(True)
    return model.train()


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` of a timm model's data config (what its inputs are normalised with)."""
    data_config = timm.data.resolve_model_data_config(model)
    return tuple(float(v) for v in data_config["mean"]), tuple(float(v) for v in data_config["std"])


def save_backbone_checkpoint(
    model: nn.Module, path: str | Path, dtype: torch.dtype | None = torch.float16, overwrite: bool = False
) -> Path:
    """Writes a timm ViT's weights, without its classifier, as a timm-style ``.safetensors`` state dict.

    The file is what :func:`load_backbone_checkpoint` (``backbone.checkpoint_path=``) reads. Written atomically.

    Args:
        model: A timm ``VisionTransformer`` (e.g. from :func:`create_pretraining_vit`) or a :class:`Backbone`.
        path: Target file; must end in ``.safetensors``.
        dtype: Floating-point tensors are stored in this type (None: as they are).
        overwrite: Replace an existing file (otherwise an existing file is an error).

    Raises:
        ValueError: for another suffix, an existing file without ``overwrite``, or a model that is not a timm ViT.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"backbone weights file {str(path)!r} must end in .safetensors")
    if path.exists() and not overwrite:
        raise ValueError(f"backbone weights file {str(path)!r} exists; pass overwrite=True to replace it")
    vit = model.model if isinstance(model, Backbone) else model
    _check_vision_transformer(vit, type(vit).__name__)
    state = {
        key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in vit.state_dict().items()
        if key not in _CLASSIFIER_KEYS
    }
    return atomic_write(path, lambda temporary: save_file(state, str(temporary), metadata={"format": "pt"}))


def load_backbone_checkpoint(
    model: nn.Module, checkpoint_path: str | Path, *, allow_missing: bool = False
) -> tuple[list[str], list[str]]:
    """Loads local weights into a timm VisionTransformer, reporting what did not match.

    Args:
        model: The timm model to load into (in place).
        checkpoint_path: ``.safetensors`` file or a ``torch.save`` file (read with ``weights_only=True``).
        allow_missing: Accept a checkpoint without some of the model's weights (they stay as initialised, frozen
            random blocks for a backbone: ``backbone.allow_missing_weights=true``); otherwise that is an error.

    Returns:
        ``(missing, unexpected)`` keys; a warning lists them when either is non-empty. Classifier weights
        (``head.*``) of the checkpoint are ignored: the backbone has no classifier.

    Raises:
        ValueError: if the file is missing or unreadable, holds no tensors, has shapes that do not fit, matches
            none of the model's weights, or lacks some of them (unless ``allow_missing``).
    """
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ValueError(f"checkpoint_path {str(path)!r} does not exist or is not a file")
    state_dict = read_state_dict(path)
    state_dict = {k: v for k, v in state_dict.items() if k not in _CLASSIFIER_KEYS}
    try:
        state_dict = checkpoint_filter_fn(state_dict, model)
    except (RuntimeError, ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"checkpoint {str(path)!r} could not be adapted to {type(model).__name__}: {error}") from error
    model_keys = set(model.state_dict())
    matched = model_keys & set(state_dict)
    if not matched:
        example = sorted(state_dict)[:5]
        raise ValueError(
            f"checkpoint {str(path)!r} matches none of the model's {len(model_keys)} weights "
            f"(checkpoint keys start with {example}); expected a timm VisionTransformer state dict"
        )
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:
        raise ValueError(f"checkpoint {str(path)!r} does not fit the model: {error}") from error
    missing = [key for key in result.missing_keys if key not in _CLASSIFIER_KEYS]
    unexpected = list(result.unexpected_keys)
    if missing and not allow_missing:
        shown = missing if len(missing) <= 8 else [*missing[:8], f"... ({len(missing)} in all)"]
        raise ValueError(
            f"checkpoint {str(path)!r} lacks {len(missing)} of the model's weights: {shown}; they would stay "
            "randomly initialised and frozen. Use a checkpoint of this architecture (same depth and sizes), or accept "
            "them with allow_missing_weights=True (+backbone.allow_missing_weights=true on the command line)"
        )
    if missing or unexpected:
        warnings.warn(
            f"checkpoint {str(path)!r}: {len(matched)} weights loaded; missing (left at init): {missing}; "
            f"unexpected (ignored): {unexpected}",
            stacklevel=2,
        )
    return missing, unexpected


def _create_vit(
    name: str,
    pretrained: bool,
    checkpoint_path: str | Path | None,
    img_size: int | tuple[int, int] | None,
    num_classes: int,
    allow_missing: bool = False,
    **timm_kwargs: Any,
) -> VisionTransformer:
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}; see timm.list_models('vit_*')")
    kwargs = dict(timm_kwargs)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if pretrained:
        # check the architecture on the meta device, and that its weights can be had, before timm fetches any
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        _check_vision_transformer(probe, name)
        check_hub_weights(name, dict(getattr(probe, "pretrained_cfg", None) or {}), timeout=HUB_PROBE_SECONDS)
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    except Exception as error:  # the hub client and torch.hub raise their own types for a failed download
        if not pretrained or not is_download_error(error):
            raise
        raise ValueError(
            f"backbone {name!r}: the pretrained weights could not be downloaded ({type(error).__name__}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no message'}); {NO_WEIGHTS_HINT}"
        ) from error
    _check_vision_transformer(model, name)
    if checkpoint_path is not None:
        load_backbone_checkpoint(model, checkpoint_path, allow_missing=allow_missing)
    return model


def _check_vision_transformer(model: nn.Module, name: str) -> None:
    if not isinstance(model, VisionTransformer):
        raise ValueError(
            f"timm model {name!r} is a {type(model).__name__}; expected a VisionTransformer or a subclass of it "
            "(vit_*, deit_*, ...)"
        )


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    first, second = value
    return (int(first), int(second))


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
