"""What several explanation modules share: running a model in eval mode for one call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fftprompt.model import PromptedViT


@contextmanager
def evaluating(model: PromptedViT) -> Iterator[None]:
    """Puts ``model`` in ``eval()`` inside the ``with`` block and restores its training mode on exit."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
