"""Small shared pieces with no fftprompt imports: task names, ImageNet normalisation, a choice check, atomic writes.

Every file fftprompt writes for a user (adapter files, ``metrics.json``, ``config.yaml``, checkpoints) goes through
:func:`atomic_write`: a temporary file in the target's own directory, flushed to disk and renamed over the target,
so a reader or a crashed run sees the old file or the new one, never a mix.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "ABSENT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TASKS",
    "Task",
    "atomic_write",
    "check_choice",
    "is_installed",
    "jsonable",
    "leaf_differences",
    "select",
    "to_plain",
    "write_json_atomic",
    "write_section",
]

Task = Literal["classification", "segmentation"]
TASKS: tuple[str, ...] = get_args(Task)

# The normalisation most timm ViTs expect: data modules' default (runs pass the backbone's own) and figures' default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_choice(name: str, value: object, choices: Any) -> None:
    """Raises ``ValueError("name='value'; expected one of [...]")`` unless ``value`` is one of ``choices``.

    Args:
        name: The option's name as the user writes it (a config key or argument name).
        value: The value given.
        choices: A ``Literal[...]`` type or a sequence of allowed values.
    """
    allowed = list(get_args(choices) or choices)
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {allowed}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any], *, fsync: bool = True) -> Path:
    """Writes ``path`` through ``write(temporary)`` on a temporary file in the same directory, then renames it into
    place; on any error the temporary file is removed and ``path`` is left as it was.

    Args:
        path: Target file (its directory is created).
        write: Writes the content to the temporary path it is given.
        fsync: Flush file and directory to disk, so the rename survives a power loss.

    Returns:
        ``path`` as a ``Path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        umask = os.umask(0)  # mkstemp made the file private (0600): give it the mode a plain open() would
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        if fsync:
            with temporary.open("rb") as file:
                os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_directory(target.parent)
    return target


def write_json_atomic(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    """Writes ``data`` as indented JSON (tensors, numpy scalars and paths made plain) with :func:`atomic_write`."""
    text = json.dumps(jsonable(data), indent=2) + "\n"
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_section(path: str | os.PathLike[str], name: str, markdown: str) -> Path:
    """Writes ``markdown`` as the section ``name`` of the text file ``path``, keeping everything else in it.

    The section lies between ``<!-- begin generated: name ... -->`` and ``<!-- end generated: name -->`` lines: an
    existing one is replaced, else the section is appended (a new file holds just it). Text written by hand around
    generated sections (a discussion, other commands' sections) survives a rerun. Written with :func:`atomic_write`.
    """
    begin = f"<!-- begin generated: {name} (rewritten by its command; edit outside these markers) -->"
    end = f"<!-- end generated: {name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}\n"
    target = Path(path)
    text = target.read_text(encoding="utf-8") if target.exists() else ""
    prefix = f"<!-- begin generated: {name} "
    if prefix in text:
        head, rest = text.split(prefix, 1)
        if end not in rest:
            raise ValueError(f"{target}: the section {name!r} has no end marker {end!r}; add it or remove the section")
        text = head + block + rest.split(end, 1)[1].removeprefix("\n")
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + block
    return atomic_write(target, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def jsonable(value: Any) -> Any:
    """``value`` with tensors/arrays as lists, numpy scalars as numbers, paths as strings and non-finite floats as
    strings (JSON has no NaN/inf)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # torch tensors, numpy arrays and scalars
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _fsync_directory(directory: Path) -> None:
    """Makes a rename inside ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def to_plain(value: Any) -> Any:
    """Mappings and sequences (Hydra's ``DictConfig``/``ListConfig`` too, interpolations resolved) as plain ``dict``
    and ``list`` values, recursively."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [to_plain(v) for v in value]
    return value


ABSENT = object()  # a key missing from one of two compared configs


def leaf_differences(saved: Any, current: Any, key: str) -> Iterator[tuple[str, str, Any, Any]]:
    """``(line, key, saved value, current value)`` for every entry of two plain configs that differs, descending into
    mappings present on both sides; an entry missing on one side (:data:`ABSENT`) is reported whole."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        for name in sorted(set(saved) | set(current), key=str):
            child = f"{key}.{name}" if key else str(name)
            yield from leaf_differences(saved.get(name, ABSENT), current.get(name, ABSENT), child)
    elif saved != current:
        yield f"{key}: {_show(saved)} in the run, {_show(current)} now", key, saved, current


def _show(value: Any) -> str:
    if value is ABSENT:
        return "absent"
    text = repr(value)
    return text if len(text) <= 100 else f"{text[:97]}..."


def select(config: Mapping[str, Any], key: str) -> Any:
    """The value of the dotted ``key`` (``"task.name"``) in a plain config, None when it is missing."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
