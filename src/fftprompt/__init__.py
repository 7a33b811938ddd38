"""fftprompt: frequency-conditioned visual prompts and FourierFT adapters for frozen Vision Transformers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
