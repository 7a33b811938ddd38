"""Command-line overrides that need a look before Hydra composes them; no Lightning or model imports, so that the
console entry points can call this before Hydra sets up logging.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fftprompt.runfiles import RUN_ENTRIES
from fftprompt.utils import is_installed

__all__ = ["check_sweeper", "eval_overrides"]

_OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper"


def eval_overrides(overrides: Sequence[str]) -> list[str]:
    """``fftprompt-eval``'s overrides as Hydra composes them: a key below one of :data:`~fftprompt.runfiles.RUN_ENTRIES`
    (``data.root=...``) is force-added (``++``), since it belongs to the run's config (a folder dataset's root),
    which the packaged defaults need not have; :func:`eval_config` then applies it to the run's entry. Unchanged
    with ``use_run_config=false``."""
    if any(o.partition("=")[0] == "use_run_config" and o.partition("=")[2].lower() == "false" for o in overrides):
        return list(overrides)
    below = re.compile(rf"^(?:{'|'.join(RUN_ENTRIES)})\.[^=]+=")
    return [f"++{o}" if below.match(o) else o for o in overrides]


def check_sweeper(overrides: Sequence[str]) -> None:
    """Raises ``ValueError`` when ``overrides`` select a hyper-parameter search (``hparams_search=...``) but Hydra's
    Optuna sweeper, an optional extra, is not installed (Hydra itself would only say that a config is missing)."""
    for override in overrides:
        key, _, value = str(override).lstrip("+~").partition("=")
        searching = key in ("hparams_search", "hydra/sweeper") and value not in ("", "null", "basic")
        if searching and not is_installed(_OPTUNA_SWEEPER):
            raise ValueError(
                f"{override}: the hyper-parameter search runs on Hydra's Optuna sweeper, which is not installed: "
                "pip install 'fftprompt[search]' (or pip install hydra-optuna-sweeper)"
            )
