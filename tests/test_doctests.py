"""The runnable examples in docstrings (pingouin style) run, and say what they claim."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# every module of the package and the analysis half whose docstrings hold an example (the collector's need
# a model, so they are prose)
MODULES = sorted(f"animacy.{'analysis.' if p.parent.name == 'analysis' else ''}{p.stem}"
                 for folder in ("animacy", "analysis") for p in (REPO / folder).glob("*.py")
                 if ">>> " in p.read_text())


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
