"""`animacy collect plan --device-profile`: the estimate works from FLOP counts and stored rates, scales as
the study does, names the stage that dominates, and refuses a study that does not fit the card."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from animacy.cli import main
from animacy.collect.config import load_config
from animacy.collect.plan import Shape, check_memory, estimate, load_profile
from animacy.errors import ConfigError

ORIGINAL = Path(__file__).resolve().parents[1] / "data" / "plans" / "original_size.toml"


def _hours(out: str) -> float:
    return float(re.search(r"^total\s+([\d.]+)", out, re.M).group(1))


def test_the_original_study_is_planned_and_refused_where_it_does_not_fit(capsys, tmp_path):
    assert main(["collect", "plan", str(ORIGINAL), "--device-profile", "h100", "--model-shape", "gemma3-27b"]) == 2
    out, err = capsys.readouterr()
    assert "dominated by generation" in out and "DOES NOT FIT" in out
    assert "does not fit NVIDIA H100" in err and "generation_batch 64" in err and "GiB" in err
    assert "Traceback" not in err
    # at a batch that fits, the same plan passes, and the H200 (measured) is faster than the derived A100
    smaller = tmp_path / "fits.toml"
    smaller.write_text(ORIGINAL.read_text().replace("generation_batch = 64", "generation_batch = 32"))
    hours = {}
    for card in ("h200", "h100", "a100"):
        assert main(["collect", "plan", str(smaller), "--device-profile", card, "--model-shape", "gemma3-27b"]) == 0
        out = capsys.readouterr().out
        assert "fits" in out
        hours[card] = _hours(out)
    assert hours["h200"] < hours["h100"] < hours["a100"]


def test_the_estimate_scales_with_the_study_and_the_card():
    cfg = load_config(ORIGINAL)
    shape, h200, a100 = Shape.named("gemma3-27b"), load_profile("h200"), load_profile("a100")
    base = {s.name: s.seconds for s in estimate(cfg, 123, 120, shape, h200)["stages"]}
    cfg.replicates *= 2
    double = {s.name: s.seconds for s in estimate(cfg, 123, 120, shape, h200)["stages"]}
    for name in base:  # generation: the roles grouped otherwise into batches, so about twice
        assert double[name] == pytest.approx(2 * base[name], rel=0.05 if name == "generation" else 1e-9), name
    slow = {s.name: s.seconds for s in estimate(cfg, 123, 120, shape, a100)["stages"]}
    assert slow["scoring (with and without the prompt)"] == pytest.approx(
        double["scoring (with and without the prompt)"] / 0.3155, rel=1e-6)
    assert slow["generation"] == pytest.approx(double["generation"] / 0.425, rel=1e-6)
    # measured rates are used as measured: 366 generated tokens/s for Gemma-27B on the H200, at the batch
    # (32) and mean context (128 tokens) it was measured at
    cfg = load_config(ORIGINAL)
    cfg.tasks, cfg.replicates, cfg.generation_batch = cfg.tasks[:8], 4, 32
    gen = estimate(cfg, 123, 120, shape, h200, response_tokens=2 * (128 - 40))["stages"][0]
    assert gen.seconds == pytest.approx(gen.tokens / 366) and "measured" in gen.rate
    # decoding reads the weights once per step, whatever the batch: a quarter of the batch, about a quarter
    # of the rate; and 50 responses a role at generation_batch 32 are generated three roles at a time, in
    # batches of 32 and one of 22, as the runner groups them
    cfg.generation_batch = 8
    small = estimate(cfg, 123, 120, shape, h200, response_tokens=176)["stages"][0]
    assert 3.5 < small.seconds / gen.seconds < 4.0
    cfg = load_config(ORIGINAL)
    cfg.generation_batch = 32
    split = estimate(cfg, 123, 120, shape, h200)["stages"][0]
    cfg.generation_batch = 50
    whole = estimate(cfg, 123, 120, shape, h200)["stages"][0]
    assert "batches of 32/22" in split.rate and 1.4 < split.seconds / whole.seconds < 5 / 3


def test_a_model_too_large_for_the_card_is_refused_with_the_numbers():
    cfg = load_config(ORIGINAL)
    with pytest.raises(ConfigError) as e:
        check_memory(cfg, Shape.named("qwen3-30b-a3b"), 40.0, "a 40 GiB card")
    msg = str(e.value)
    assert "a 40 GiB card" in msg and "weights 56.9 GiB" in msg
    check_memory(cfg, Shape.named("llama3-8b"), 139.0, "an H200")  # fits: no error


def test_an_unknown_card_or_shape_is_a_clear_error(capsys):
    assert main(["collect", "plan", str(ORIGINAL), "--device-profile", "tpu", "--model-shape", "gemma3-27b"]) == 2
    assert "known: h200, h100, a100" in capsys.readouterr().err
    assert main(["collect", "plan", str(ORIGINAL), "--device-profile", "h100", "--model-shape", "gpt5"]) == 2
    assert "unknown model shape 'gpt5'" in capsys.readouterr().err


def test_the_plan_needs_neither_torch_nor_transformers():
    """A laptop without the collector's extra can plan a GPU study (the named shape, the stored rates)."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from animacy.cli import main\n"
            f"raise SystemExit(main(['collect', 'plan', {str(ORIGINAL)!r}, '--device-profile', 'h200', "
            "'--model-shape', 'gemma3-27b']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "dominated by generation" in res.stdout


def test_the_kv_cache_the_plan_counts_is_the_one_transformers_holds():
    """Bytes of the KV cache after a forward over 40 tokens, as transformers allocates it, for a model with
    sliding-window layers (Gemma 3: five in six slide) and one without (Llama): the plan's count, exactly."""
    torch = pytest.importorskip("torch")
    import transformers

    from animacy.collect.plan import SHAPES

    kinds = {"gemma3": transformers.Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, sliding_window=16, layer_types=[
            "full_attention" if (k + 1) % 6 == 0 else "sliding_attention" for k in range(6)]),
        "llama": transformers.LlamaConfig(**SHAPES["tiny"][1])}
    for name, config in kinds.items():
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
        with torch.inference_mode():
            out = model(torch.arange(2, 42)[None], use_cache=True)
        held = sum(t.numel() * t.element_size() for layer in out.cache.layers
                   for t in (layer.keys, layer.values))
        shape = Shape.from_config(name, config.to_dict())
        assert shape.kv_bytes(40, 4) == held, name
    assert Shape.named("gemma3-27b").sliding_layers == 52 and Shape.named("llama3-8b").sliding_layers == 0
