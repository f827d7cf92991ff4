"""The runnable examples in docstrings (pingouin style) run, and say what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["animacy.tables", "animacy.writers", "animacy.analysis.mixed", "animacy.analysis.ratings",
           "animacy.analysis.bootstrap"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
