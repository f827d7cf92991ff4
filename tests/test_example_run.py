"""data/example is a real demo run made by the current code: it says so, and it validates."""

from __future__ import annotations

from animacy.run import Run
from animacy.schema import SCHEMA_VERSION
from tests.conftest import REPO


def test_the_example_run_was_made_by_the_current_schema():
    run = Run(REPO / "data" / "example")
    manifest = run.manifest
    assert manifest.get("schema_version") == SCHEMA_VERSION, (
        "data/example was made by an older schema: regenerate it with `animacy demo` and copy runs/demo/run "
        "(without _jobs) to data/example")
    assert manifest["kind"] == "collected" and manifest["generation"]["generator"] == "transformers"
    assert manifest["provenance"]["animacy_commit"]
    run.validate()
