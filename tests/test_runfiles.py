"""The run directory's names and run-defining key lists have one owner, :mod:`fftprompt.runfiles`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fftprompt
from fftprompt import runfiles

SOURCE = Path(fftprompt.__file__).parent
# names no other meaning shares in the code: dict keys and dataset folders ("masks", "predict") and timm's own
# weight files on the Hugging Face hub (TIMM_WEIGHTS, TIMM_CONFIG) are left out
OWNED_VALUES = {
    value
    for name, value in vars(runfiles).items()
    if name.isupper() and isinstance(value, str) and ("." in value or value in ("figures", "checkpoints"))
} - {runfiles.TIMM_WEIGHTS, runfiles.TIMM_CONFIG}


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    """String constants of ``tree`` that are not docstrings."""
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_owned_values_cover_the_run_directory():
    assert {"config.yaml", "metrics.json", "adapter.json", "checkpoints", "last.ckpt", ".replaced-"} <= OWNED_VALUES


def test_no_module_but_runfiles_spells_or_defines_a_run_directory_name():
    spelled, defined = [], []
    for path in sorted(SOURCE.rglob("*.py")):
        if path.name == "runfiles.py" and path.parent == SOURCE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(SOURCE)
        for node in _code_strings(tree):
            if node.value in OWNED_VALUES or runfiles.REPLACED_MARK in node.value:
                spelled.append(f"{where}:{node.lineno} {node.value!r}")
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in runfiles.__all__:
                    defined.append(f"{where}:{node.lineno} {target.id}")
    assert not spelled, f"import these names from fftprompt.runfiles: {spelled}"
    assert not defined, f"defined again outside fftprompt.runfiles: {defined}"


@pytest.mark.parametrize(
    ("key", "entries", "expected"),
    [
        ("paths.output_dir", ("paths", "report"), ["paths"]),
        ("paths", ("paths",), ["paths"]),
        ("pathsx.output_dir", ("paths",), []),
        (
            "callbacks.model_checkpoint.monitor",
            ("callbacks", "callbacks.model_checkpoint", "logger"),
            ["callbacks", "callbacks.model_checkpoint"],
        ),
    ],
)
def test_covering_names_the_entry_and_the_mappings_above_it(key, entries, expected):
    assert runfiles.covering(key, entries) == expected


def test_the_key_lists_nest_as_documented():
    below = lambda keys, entries: all(runfiles.covering(k, entries) for k in keys)  # noqa: E731
    assert below(runfiles.MODEL_KEYS, runfiles.RUN_ENTRIES)  # the model is part of what eval takes from a run
    assert not any(runfiles.covering(k, runfiles.RESUME_MAY_CHANGE) for k in runfiles.RUN_ENTRIES)
    assert "seed" in runfiles.NOT_GROUPED and not runfiles.covering("seed", runfiles.RESUME_MAY_CHANGE)
