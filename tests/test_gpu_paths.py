"""What of the GPU path can be checked without a GPU: the benchmark's FLOP accounting on real-size
configs (built on the meta device: no memory), and a smoke run of its code on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from animacy.analysis.mixed_r import environment_without_r
from tests.collect_fixtures import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.parametrize(("name", "params_b", "gflop"), [
    ("gemma3-27b", 27.0, 54.0),       # dense: 2 x 27B (the 54 GFLOP/token)
    ("llama3-8b", 8.0, 15.0),         # untied embeddings: the input embedding is a lookup
    ("qwen3-30b-a3b", 30.5, 6.1),     # mixture of experts: 8 of 128 experts, ~3B active
])
def test_flops_per_token_of_real_configs(name, params_b, gflop):
    """The plan's analytic shape (collect/plan.py) against the parameters transformers builds for it."""
    sys.path.insert(0, str(BENCH.parent))
    from gpu import build

    from animacy.collect.plan import Shape

    model, _ = build(name, "meta", torch.bfloat16)
    built = sum(p.numel() for p in model.parameters())
    shape = Shape.named(name)
    assert built / 1e9 == pytest.approx(params_b, rel=0.02)
    assert shape.params_total == pytest.approx(built, rel=0.002)  # only the norms' weights are left out
    assert shape.flops_per_token() / 1e9 == pytest.approx(gflop, rel=0.03)


def test_gpu_benchmark_code_path_runs_on_the_cpu(tmp_path):
    """Every measurement of the benchmark (scoring, the sweep and its two naive baselines, both generation
    paths) runs on the CPU in quick mode, and a measured profile replaces a derived one in the file given."""
    import json
    import shutil

    from animacy.collect.plan import PROFILES, load_profile

    profiles = tmp_path / "profiles.json"
    shutil.copy(PROFILES, profiles)
    res = subprocess.run([sys.executable, str(BENCH), "--model", "tiny", "--device", "cpu", "--seq", "64",
                          "--batch-tokens", "256", "--gen-batch", "2", "--gen-tokens", "4", "--quick",
                          "--write-profile", "a100", "--profiles", str(profiles), "--compile-backend", "eager"],
                         capture_output=True, text=True, timeout=300, env=environment_without_r())
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-2])
    for key in ("scoring_tokens_per_s", "sweep_steered_tokens_per_s", "one_batched_forward_seconds",
                "one_forward_per_row_seconds", "generation_tokens_per_s", "generate_many_tokens_per_s",
                "generate_many_compiled_tokens_per_s"):
        assert result[key] > 0, key
    assert result["per_row_over_sweep"] > 1, "one forward per row is slower than the sweep"
    a100 = load_profile("a100", profiles)
    assert "measured" in a100["source"] and "tiny" in a100["models"] and "derive_from" not in a100
    assert load_profile("h200", profiles) == load_profile("h200")  # the others are untouched


def test_the_prepared_gpu_lease_script_runs_every_step(tmp_path):
    """benchmarks/gpu_lease.sh, the one script a GPU lease runs, with each of its steps on the tiny shape
    on the CPU: every step exits 0, leaves its result, and the measured profile lands in its copy of the
    profiles (the repository's is untouched)."""
    import json
    import os

    from animacy.collect.plan import PROFILES

    before = PROFILES.read_bytes()
    env = {**environment_without_r(), "OUT": str(tmp_path), "DEVICE": "cpu", "SMOKE": "1", "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(BENCH.with_name("gpu_lease.sh"))], capture_output=True, text=True,
                         timeout=600, env=env, cwd=os.getcwd())
    assert res.returncode == 0, res.stderr
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    assert len(steps) == 3 and all(": exit 0 in" in s for s in steps), steps
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(results) == 3 and all(r["scoring_tokens_per_s"] > 0 for r in results)
    assert "tiny" in json.loads((tmp_path / "device_profiles.json").read_text())["h200"]["models"]
    assert PROFILES.read_bytes() == before
