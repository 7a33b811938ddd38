"""fftprompt: frequency-conditioned visual prompts and FourierFT adapters for frozen Vision Transformers.

The dozen names most users need; everything else lives in its module (``fftprompt.spectral``, ``fftprompt.data``...).
"""

from __future__ import annotations

from importlib.metadata import version

from fftprompt.backbone import Backbone, create_backbone
from fftprompt.fourierft import FourierFTConfig, FourierFTLinear, inject_fourierft, merge_fourierft
from fftprompt.heads import ClassificationHead, LinearDecoder, PUPDecoder
from fftprompt.model import PromptedViT, create_model, load_model
from fftprompt.prompts import FrequencyPrompt, ModelDims, NoPrompt, PromptSource, VFPTPrompt, VPTPrompt
from fftprompt.spectral import FrequencyFeatures, FrequencyMaps

__version__ = version("fftprompt")

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
