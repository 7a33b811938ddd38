"""fftprompt: frequency-conditioned visual prompts and FourierFT adapters for frozen Vision Transformers.

The dozen names most users need; everything else lives in its module (``fftprompt.spectral``, ``fftprompt.data``...).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fftprompt.backbone import Backbone, create_backbone
    from fftprompt.fourierft import FourierFTConfig, FourierFTLinear, inject_fourierft, merge_fourierft
    from fftprompt.heads import ClassificationHead, LinearDecoder, PUPDecoder
    from fftprompt.model import PromptedViT, create_model, load_model
    from fftprompt.prompts import FrequencyPrompt, ModelDims, NoPrompt, PromptSource, VFPTPrompt, VPTPrompt
    from fftprompt.spectral import FrequencyFeatures, FrequencyMaps

__version__ = version("fftprompt")

# the module of each public name, imported at first use (PEP 562): the commands' --help and config errors do not wait
# seconds for torch and timm (importing fftprompt.backbone, or using any of these names, registers vit_demo_patch8)
_MODULES = {
    "Backbone": "backbone",
    "create_backbone": "backbone",
    "FourierFTConfig": "fourierft",
    "FourierFTLinear": "fourierft",
    "inject_fourierft": "fourierft",
    "merge_fourierft": "fourierft",
    "ClassificationHead": "heads",
    "LinearDecoder": "heads",
    "PUPDecoder": "heads",
    "PromptedViT": "model",
    "create_model": "model",
    "load_model": "model",
    "FrequencyPrompt": "prompts",
    "ModelDims": "prompts",
    "NoPrompt": "prompts",
    "PromptSource": "prompts",
    "VFPTPrompt": "prompts",
    "VPTPrompt": "prompts",
    "FrequencyFeatures": "spectral",
    "FrequencyMaps": "spectral",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'fftprompt' has no attribute {name!r}")
    value = getattr(import_module(f"fftprompt.{_MODULES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULES})


__all__ = [
    "Backbone",
    "ClassificationHead",
    "FourierFTConfig",
    "FourierFTLinear",
    "FrequencyFeatures",
    "FrequencyMaps",
    "FrequencyPrompt",
    "LinearDecoder",
    "ModelDims",
    "NoPrompt",
    "PUPDecoder",
    "PromptSource",
    "PromptedViT",
    "VFPTPrompt",
    "VPTPrompt",
    "__version__",
    "create_backbone",
    "create_model",
    "inject_fourierft",
    "load_model",
    "merge_fourierft",
]
