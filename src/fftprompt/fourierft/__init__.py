"""FourierFT weight deltas (arXiv 2405.03003) for frozen linear layers, numerically identical to PEFT's.

A FourierFT layer learns ``n`` spectral coefficients ``c`` of a weight change ``dW = scaling * Re(ifft2(S))``, where
the ``d_out x d_in`` spectrum ``S`` is zero except at ``n`` fixed random entries ``S[u_k, v_k] = c_k``.

Modules, in PEFT's shape:

- :mod:`~fftprompt.fourierft.config`: :class:`FourierFTConfig`, every default and its validation, target syntax;
- :mod:`~fftprompt.fourierft.indices`: the entry locations and the index tensors derived from them;
- :mod:`~fftprompt.fourierft.functional`: deltas, the merged weight, the exact coefficient gradients, autograd;
- :mod:`~fftprompt.fourierft.layer`: :class:`FourierFTLinear` (``get_delta_weight``, ``merge``, ``unmerge``);
- :mod:`~fftprompt.fourierft.bank`: :class:`FourierFTBank`, the deltas of all layers of one shape in one batched
  inverse FFT per forward (and their dense coefficient gradients in one batched FFT);
- :mod:`~fftprompt.fourierft.model`: inject into and merge out of whole models, coefficient state dicts.
"""

from fftprompt.fourierft.bank import FourierFTBank
from fftprompt.fourierft.config import (
    QKV_BLOCKS,
    REGEX_PREFIX,
    VIT_B_N_FREQUENCY,
    AdapterDtype,
    FourierFTConfig,
    GradMode,
    Init,
)
from fftprompt.fourierft.indices import fourierft_locations
from fftprompt.fourierft.layer import FourierFTLinear
from fftprompt.fourierft.model import (
    count_fourierft_matrices,
    fourierft_state_dict,
    inject_fourierft,
    load_fourierft_state_dict,
    merge_fourierft,
    unload_fourierft,
)

__all__ = [
    "QKV_BLOCKS",
    "REGEX_PREFIX",
    "VIT_B_N_FREQUENCY",
    "AdapterDtype",
    "FourierFTBank",
    "FourierFTConfig",
    "FourierFTLinear",
    "GradMode",
    "Init",
    "count_fourierft_matrices",
    "fourierft_locations",
    "fourierft_state_dict",
    "inject_fourierft",
    "load_fourierft_state_dict",
    "merge_fourierft",
    "unload_fourierft",
]
