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


def test_gpu_benchmark_code_path_runs_on_the_cpu():
    res = subprocess.run([sys.executable, str(BENCH), "--model", "tiny", "--device", "cpu", "--seq", "64",
                          "--batch-tokens", "256", "--gen-batch", "2", "--gen-tokens", "4", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, env=environment_without_r())
    assert res.returncode == 0, res.stderr
    assert '"scoring_tokens_per_s"' in res.stdout and "sweep_steered_tokens_per_s" in res.stdout
