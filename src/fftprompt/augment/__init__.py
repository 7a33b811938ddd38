"""Frequency-domain augmentation, filtering and corruption (the ``augment`` config group and ``fftprompt-eval``'s
``corruptions=``).

- :mod:`~fftprompt.augment.functional`: the maths as plain tensor functions (FDA's low-frequency amplitude swap,
  FACT's amplitude mix, ideal radial filters);
- :mod:`~fftprompt.augment.transforms`: thin batch augmentations over them (``augment=fda``, ``amp_mix``, ``band``),
  applied by the Lightning module on the training device after the batch transfer;
- :mod:`~fftprompt.augment.corruptions`: ImageNet-C-style corruptions for robustness evaluation.
"""

from fftprompt.augment.corruptions import CORRUPTIONS, SEVERITIES, check_corruptions, corrupt
from fftprompt.augment.transforms import AmplitudeMix, BandFilter, FourierDomainAdaptation, SpectralAugment

__all__ = [
    "CORRUPTIONS",
    "SEVERITIES",
    "AmplitudeMix",
    "BandFilter",
    "FourierDomainAdaptation",
    "SpectralAugment",
    "check_corruptions",
    "corrupt",
]
