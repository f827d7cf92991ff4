"""Benchmark: collector throughput on a GPU against the hardware limit, for a model of real size built
from its config with random weights (weights do not change speed; hub downloads are impossible on the
lent machines).

Teacher-forced scoring is compute-bound: a dense model costs about 2 x parameters FLOPs per token
(for a mixture of experts, its active parameters; attention's own FLOPs are left out, so MFU is a
slight underestimate at long contexts). Measured, each after a warm-up:

- scoring: `TransformersBackend.score_batch` on batches of `--batch-tokens` tokens, bf16 weights, fp32
  target-only log-probs: tokens/s and model FLOPs utilisation against `--peak-tflops`;
- a steering sweep (6 derivations x 4 magnitudes on one response per call): steered tokens/s, against the
  two naive baselines measured in the same run: every row in one batched forward, and one forward per row;
- generation: `model.generate` (batched greedy, `--gen-batch` sequences) and the project's own
  `generate_many` (counter-seeded sampling, the same batch), plain and with `compile_decoding` (a static
  KV cache, decoding steps compiled, CUDA graphs on a GPU): generated tokens/s;
- peak GPU memory.

`--quick` shortens every measurement (one repeat, shorter sequences) to fit a short GPU lease (under 3
minutes for an 8B model); `--write-profile CARD` stores the measured rates as the plan's profile for that
card (data/device_profiles.json, with the date and the card's name), replacing a derived one.

    python benchmarks/gpu.py --model gemma3-27b --peak-tflops 790      # on an H100/H200 (bf16 dense ~790 TFLOP/s)
    python benchmarks/gpu.py --model llama3-8b --quick --write-profile h200
    python benchmarks/gpu.py --model tiny --device cpu                   # a smoke run of the code path
"""

from __future__ import annotations

import argparse
import json

import torch

from animacy.collect.plan import SHAPES, Shape, measure_rates, timed


def build(name: str, device: str, dtype: torch.dtype):
    """A model of the named shape (collect/plan.py's SHAPES, the ones the plan knows) with random weights."""
    import transformers

    cls_name, kwargs = SHAPES[name]
    cfg = getattr(transformers, cls_name)(**kwargs)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval(), cfg


def main() -> None:
    from types import SimpleNamespace

    from animacy.collect.backend import Intervention, Sampling, TransformersBackend

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SHAPES), default="gemma3-27b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seq", type=int, default=512, help="tokens per scored sequence (prompt + response)")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one repeat, shorter sequences: for a short GPU lease")
    p.add_argument("--write-profile", default=None, metavar="CARD",
                   help="store the measured rates as the plan's profile for CARD (in --profiles)")
    p.add_argument("--profiles", default=None, help="the profiles file (default: data/device_profiles.json)")
    p.add_argument("--experts", default=None, choices=["eager", "grouped_mm", "batched_mm"],
                   help="a mixture of experts' expert matmuls (default: transformers' choice)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the compiled-decoding measurement ('eager' for a smoke run)")
    a = p.parse_args()
    if a.quick:
        a.repeats, a.seq, a.batch_tokens = 1, min(a.seq, 256), min(a.batch_tokens, 8192)
        a.gen_batch, a.gen_tokens = min(a.gen_batch, 16), min(a.gen_tokens, 32)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or --model tiny --device cpu for a smoke run")
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    model, cfg = build(a.model, a.device, dtype)
    if a.experts and hasattr(model, "set_experts_implementation") and getattr(cfg, "num_experts", None):
        model.set_experts_implementation(a.experts)
    # random weights need no real tokenizer: ids decode to nothing
    be = TransformersBackend(model, SimpleNamespace(pad_token_id=0, eos_token_id=1, decode=lambda ids, **k: ""))
    be.eos = set()  # random weights: never stop early
    fpt = Shape.named(a.model).flops_per_token()  # attention's own FLOPs left out, as the module docstring says
    gen = torch.Generator().manual_seed(0)
    vocab = cfg.vocab_size
    rows = max(1, a.batch_tokens // a.seq)
    half = a.seq // 2
    seqs = torch.randint(2, vocab, (rows, a.seq), generator=gen).tolist()
    cells = 6 * 4
    V = torch.nn.functional.normalize(torch.randn(cells, cfg.hidden_size, generator=gen), dim=1).to(a.device)
    layers = [cfg.num_hidden_layers // 3, cfg.num_hidden_layers // 2]
    iv = Intervention("add", {k: V for k in layers}, torch.tensor([0.0, 0.5, 1.0, 2.0] * 6), "all",
                      {k: 10.0 for k in layers})
    prompts = torch.randint(2, vocab, (a.gen_batch, 64), generator=gen).to(a.device)
    ids = prompts.tolist()
    be.generation_batch = a.gen_batch
    rates = measure_rates(be, seqs, half, iv, ids, a.gen_tokens, a.repeats)  # scoring, the sweep, generate_many
    score_tps, sweep_tps, t_sweep = rates["scoring_tok_s"], rates["steering_tok_s"], rates["sweep_seconds"]
    # the naive baselines: every row in one batched forward, and one forward per row
    t_batched = timed(lambda: be.score_batch([seqs[0][:half]], [seqs[0][half:]], iv), a.device, a.repeats)
    t_rows = timed(lambda: [be.score_batch([seqs[0][:half]], [seqs[0][half:]], Intervention(
        "add", {k: V[i] for k in layers}, iv.coeffs[i:i + 1], "all", iv.layer_scale)) for i in range(cells)],
        a.device, a.repeats)

    def generate():
        with torch.inference_mode():
            model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                           max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens, pad_token_id=0)

    t_gen = timed(generate, a.device, 1)
    fast = TransformersBackend(model, be.tokenizer, a.gen_batch, compile_decoding=True,
                               compile_backend=a.compile_backend)
    fast.eos = set()
    t_fast = timed(lambda: fast.generate_many(ids, list(range(a.gen_batch)), Sampling(1.0, max_tokens=a.gen_tokens)),
                   a.device, 1)  # the warm-up call compiles
    result = {
        "model": a.model, "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device,
        "parameters": sum(q.numel() for q in model.parameters()), "gflop_per_token": fpt / 1e9,
        "experts_implementation": (model.get_experts_implementation() if getattr(cfg, "num_experts", None)
                                   else None),
        "scoring_tokens_per_s": score_tps, "scoring_mfu": score_tps * fpt / (a.peak_tflops * 1e12),
        "ceiling_tokens_per_s": a.peak_tflops * 1e12 / fpt,
        "sweep_steered_tokens_per_s": sweep_tps, "sweep_seconds": t_sweep,
        "one_batched_forward_seconds": t_batched, "one_forward_per_row_seconds": t_rows,
        "batched_over_sweep": t_batched / t_sweep, "per_row_over_sweep": t_rows / t_sweep,
        "generation_tokens_per_s": a.gen_batch * a.gen_tokens / t_gen,
        "generate_many_tokens_per_s": rates["generation_tok_s"],
        "generate_many_compiled_tokens_per_s": a.gen_batch * a.gen_tokens / t_fast,
        "peak_memory_gb": (torch.cuda.max_memory_allocated() / 2**30) if a.device.startswith("cuda") else None,
    }
    for k, v in result.items():
        print(f"{k:28s} {v:,.3f}" if isinstance(v, float) else f"{k:28s} {v}")
    print(json.dumps(result))
    if a.write_profile:
        write_profile(a.write_profile, a, result, rates)


def write_profile(card: str, a, result: dict, rates: dict) -> None:
    """Store this run's rates as the plan's measured profile for `card` (atomic), keeping other models'."""
    import datetime
    from pathlib import Path

    from animacy.atomic import write_json
    from animacy.collect.plan import PROFILES

    path = Path(a.profiles) if a.profiles else PROFILES
    profiles = json.loads(path.read_text())
    old = profiles.get(card, {})
    entry = {k: v for k, v in old.items() if k not in ("derive_from", "compute_ratio", "bandwidth_ratio")}
    if "derive_from" in old:  # a measured profile replaces a derived one: start from the source's defaults
        entry["defaults"] = profiles[old["derive_from"]]["defaults"]
        entry["models"] = {}
    entry.update({"card": result["device"], "source": f"measured: benchmarks/gpu.py, {datetime.date.today()}",
                  "memory_gib": torch.cuda.mem_get_info()[1] / 2**30 if torch.cuda.is_available() else 0.0,
                  "peak_tflops_bf16": a.peak_tflops})
    entry.setdefault("models", {})[a.model] = {
        "scoring_mfu": result["scoring_mfu"], "scoring_tok_s": rates["scoring_tok_s"],
        "steering_tok_s": rates["steering_tok_s"],
        "generation_tok_s": max(result["generate_many_tokens_per_s"], result["generate_many_compiled_tokens_per_s"]),
        "generation_batch": a.gen_batch, "generation_context": rates["generation_context"]}
    profiles[card] = entry
    write_json(profiles, path)
    print(f"wrote the {card} profile to {path}")


if __name__ == "__main__":
    main()
