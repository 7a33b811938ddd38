"""Whether timm's pretrained weights of a model can be had from the Hugging Face hub, asked before timm starts.

When the weights are not in the local cache, the hub is asked once, with a short timeout: offline (or with
``HF_HUB_OFFLINE=1``) the error comes at once, with the way out (local weights or none), instead of after the hub
client's retries (minutes against a network that drops packets) and with no hint. :func:`is_download_error` tells
a failed download inside timm from other errors, for the same hint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["NO_WEIGHTS_HINT", "check_hub_weights", "is_download_error"]

# the way out when pretrained weights cannot be had (the backbone config's keys)
NO_WEIGHTS_HINT = (
    "pass backbone.checkpoint_path=<local weights file> or backbone.pretrained=false (random weights), or run where "
    "the hub can be reached"
)


def check_hub_weights(name: str, pretrained_cfg: Mapping[str, Any], timeout: float) -> None:
    """Raises a ``ValueError`` with the way out when ``name``'s hub weights are not cached and the hub cannot be had.

    Only weights timm takes from the Hugging Face hub are checked (timm's default source); the hub is asked once,
    with a ``timeout`` (seconds; :data:`fftprompt.backbone.HUB_PROBE_SECONDS`), through the hub client's own HTTP
    session (its proxies and endpoint). ``pretrained_cfg`` is the timm model's ``pretrained_cfg``.
    """
    hub_id = pretrained_cfg.get("hf_hub_id")
    if not hub_id or pretrained_cfg.get("file") or pretrained_cfg.get("state_dict") or not _has_hub():
        return
    import huggingface_hub

    repo_id, _, revision = str(hub_id).partition("@")
    filenames = [pretrained_cfg["hf_hub_filename"]] if pretrained_cfg.get("hf_hub_filename") else []
    filenames = filenames or ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]
    for filename in filenames:
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename, revision=revision or None), str):
            return
    if huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true"):
        reason = "HF_HUB_OFFLINE is set"
    else:
        endpoint = huggingface_hub.constants.ENDPOINT  # HF_ENDPOINT, as the download would use it
        url = f"{endpoint}/{repo_id}/resolve/{quote(revision or 'main', safe='')}/{quote(filenames[0])}"
        try:
            huggingface_hub.get_session().head(url, timeout=timeout)
            return  # any answer, even an error status, means the hub can be reached: timm reports the rest
        except Exception as error:  # httpx, requests or OSError types, depending on the hub client's version
            detail = str(error).strip().splitlines()[0] if str(error).strip() else "no answer"
            reason = f"the hub ({endpoint}) did not answer within {timeout:g} s ({type(error).__name__}: {detail})"
    raise ValueError(
        f"backbone {name!r}: its pretrained weights ({repo_id}) are not in the local Hugging Face cache and cannot "
        f"be downloaded: {reason}; {NO_WEIGHTS_HINT}"
    )


def _has_hub() -> bool:
    try:
        import huggingface_hub  # noqa: F401  (a dependency of timm's hub loading)
    except ImportError:
        return False
    return True


def is_download_error(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) comes from the network or the hub client."""
    clients = ("huggingface_hub", "httpx", "httpx2", "httpcore", "requests", "urllib3", "urllib")
    for _ in range(8):  # the chain of causes, bounded
        if error is None:
            return False
        if type(error).__module__.split(".")[0] in clients or isinstance(error, (ConnectionError, TimeoutError)):
            return True
        error = error.__cause__ or error.__context__
    return False
