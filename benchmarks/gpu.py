"""Benchmark: collector throughput on a GPU against the hardware limit, for a model of real size built
from its config with random weights (weights do not change speed; hub downloads are impossible on the
lent machines).

Teacher-forced scoring is compute-bound: a dense model costs about 2 x parameters FLOPs per token
(for a mixture of experts, its active parameters; attention's own FLOPs are left out, so MFU is a
slight underestimate at long contexts). Measured, each after a warm-up:

- scoring: `TransformersBackend.score_batch` on batches of `--batch-tokens` tokens, bf16 weights, fp32
  target-only log-probs: tokens/s and model FLOPs utilisation against `--peak-tflops`;
- a steering sweep (6 derivations x 4 magnitudes on one response per call): steered tokens/s;
- generation with transformers (batched greedy, `--gen-batch` sequences): generated tokens/s;
- peak GPU memory.

    python benchmarks/gpu.py --model gemma3-27b --peak-tflops 790      # on an H100 (bf16 dense ~790 TFLOP/s)
    python benchmarks/gpu.py --model tiny --device cpu                   # a smoke run of the code path
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from animacy.collect.plan import SHAPES, Shape


def build(name: str, device: str, dtype: torch.dtype):
    """A model of the named shape (collect/plan.py's SHAPES, the ones the plan knows) with random weights."""
    import transformers

    cls_name, kwargs = SHAPES[name]
    cfg = getattr(transformers, cls_name)(**kwargs)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval(), cfg


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    from types import SimpleNamespace

    from animacy.collect.backend import Intervention, TransformersBackend

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SHAPES), default="gemma3-27b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seq", type=int, default=512, help="tokens per scored sequence (prompt + response)")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU, or --model tiny --device cpu for a smoke run")
    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    model, cfg = build(a.model, a.device, dtype)
    be = TransformersBackend(model, SimpleNamespace(pad_token_id=0, eos_token_id=1))
    be.eos = set()  # random weights: never stop early
    fpt = Shape.named(a.model).flops_per_token()  # attention's own FLOPs left out, as the module docstring says
    gen = torch.Generator().manual_seed(0)
    vocab = cfg.vocab_size
    rows = max(1, a.batch_tokens // a.seq)
    half = a.seq // 2
    seqs = torch.randint(2, vocab, (rows, a.seq), generator=gen).tolist()
    t_score = timed(lambda: be.score_batch([s[:half] for s in seqs], [s[half:] for s in seqs]), a.device, a.repeats)
    score_tps = rows * a.seq / t_score
    cells = 6 * 4
    V = torch.nn.functional.normalize(torch.randn(cells, cfg.hidden_size, generator=gen), dim=1).to(a.device)
    layers = [cfg.num_hidden_layers // 3, cfg.num_hidden_layers // 2]
    iv = Intervention("add", {k: V for k in layers}, torch.tensor([0.0, 0.5, 1.0, 2.0] * 6), "all",
                      {k: 10.0 for k in layers})
    t_sweep = timed(lambda: be.score(seqs[0][:half], seqs[0][half:], iv), a.device, a.repeats)
    sweep_tps = cells * (a.seq - half) / t_sweep
    prompts = torch.randint(2, vocab, (a.gen_batch, 64), generator=gen).to(a.device)

    def generate():
        with torch.inference_mode():
            model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                           max_new_tokens=a.gen_tokens, min_new_tokens=a.gen_tokens, pad_token_id=0)

    t_gen = timed(generate, a.device, 1)
    result = {
        "model": a.model, "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else a.device,
        "parameters": sum(q.numel() for q in model.parameters()), "gflop_per_token": fpt / 1e9,
        "scoring_tokens_per_s": score_tps, "scoring_mfu": score_tps * fpt / (a.peak_tflops * 1e12),
        "ceiling_tokens_per_s": a.peak_tflops * 1e12 / fpt,
        "sweep_steered_tokens_per_s": sweep_tps, "generation_tokens_per_s": a.gen_batch * a.gen_tokens / t_gen,
        "peak_memory_gb": (torch.cuda.max_memory_allocated() / 2**30) if a.device.startswith("cuda") else None,
    }
    for k, v in result.items():
        print(f"{k:28s} {v:,.3f}" if isinstance(v, float) else f"{k:28s} {v}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
