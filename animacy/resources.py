"""Files the toolkit ships (the demo study, its roles, the hand labels, the report source), found through
`importlib.resources` so that they work from a checkout, an editable install and a built wheel alike."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def resource(package: str, name: str) -> Path:
    """The path of a shipped file: `resource("animacy.data", "demo.toml")`."""
    return Path(str(files(package).joinpath(name)))


DEMO_CONFIG = resource("animacy.data", "demo.toml")
HAND_LABELS = resource("animacy.data", "labels/hand_labels.csv")
REAL_LABELS = resource("animacy.data", "labels/gemma_labels.csv")
REPORT_SOURCE = resource("animacy.report", "report.qmd")
REPLICATION_SOURCE = resource("animacy.report", "replication.qmd")


def cache_root() -> Path:
    """Where the toolkit caches what it makes (de-quantized models, judge answers): $ANIMACY_CACHE, else
    ~/.cache/animacy."""
    return Path(os.environ.get("ANIMACY_CACHE", Path.home() / ".cache" / "animacy"))
