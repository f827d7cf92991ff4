"""Benchmark: a full steering sweep on SmolLM2 — every derivation x magnitude for a set of responses —
with the project's path against a naive baseline, measured in the same run, each in its own process
(so peak memory is its own).

- project: `TransformersBackend.score` — one pass for the layers below the first steered layer, the
  rest batched over derivation x magnitude rows, zero-magnitude rows once, fp32 log-probs of the
  target tokens only;
- naive: one sequence at a time, a whole forward per (derivation, magnitude), full-vocabulary
  log-softmax over every position.

Prints steered response tokens per second for each, the ratio, peak memory, and the largest difference
between the two paths' log-probs. Then the cost of projection monitoring: the scoring pass (all responses
batched, activations captured at the demo's three layers, as the runner scores) with and without
projecting on four directions at two layers, best of three each, in the same run. Vectors are random
unit vectors (speed does not depend on them),
magnitudes relative to the measured layer norms as in the demo.

    .venv/bin/python benchmarks/collect.py [--responses 6] [--tokens 40] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DERIVATIONS = 6
MAGNITUDES = (0.0, 0.05, 0.1, 0.2)
LAYERS = {10: 137.0, 15: 167.5}  # steered layers and SmolLM2's mean residual norms there (demo run)
TASKS = ("What are your five favorite things?", "How do you feel about rainy days?",
         "Describe your typical day.")


def _setup(n_responses: int, tokens: int):
    import torch

    from animacy.collect.backend import TransformersBackend
    from animacy.collect.model import load_model
    from animacy.collect.prompts import render_prompt

    lm = load_model("smollm2")
    be = TransformersBackend(lm.model, lm.tokenizer)
    items = []
    for k in range(n_responses):
        p = render_prompt(lm.tokenizer, TASKS[k % len(TASKS)], None)
        items.append((p.ids, be.generate(p.ids, tokens, 0.7, seed=k).ids))
    torch.manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(DERIVATIONS, lm.info["hidden_size"]), dim=1)
    return lm, be, items, vectors


def child(which: str, n_responses: int, tokens: int, threads: int, out: str) -> None:
    import numpy as np
    import torch

    from animacy.collect.backend import Intervention
    from animacy.collect.hooks import Addition, hooks

    torch.set_num_threads(threads)
    lm, be, items, vectors = _setup(n_responses, tokens)
    cells = [(d, m) for d in range(DERIVATIONS) for m in MAGNITUDES]
    if which in ("score", "monitor"):
        project = {layer: vectors[:4] for layer in LAYERS} if which == "monitor" else None
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            be.score_batch([p for p, _ in items], [c for _, c in items], capture=[10, 15, 20], project=project)
            best = min(best, time.perf_counter() - t)
        print(json.dumps({"seconds": best, "tokens": sum(len(c) for _, c in items),
                          "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    results = []
    t = time.perf_counter()
    for prompt, cont in items:
        if which == "project":
            V = vectors[[d for d, _ in cells]]
            iv = Intervention("add", {layer: V for layer in LAYERS}, torch.tensor([m for _, m in cells]), "all", LAYERS)
            results.append(be.score(prompt, cont, iv).log_probs.cpu().numpy())
        else:
            rows = []
            ids = torch.tensor([prompt + cont])
            for d, m in cells:
                per_layer = {layer: [Addition(vectors[d], torch.tensor([m * norm]))] for layer, norm in LAYERS.items()}
                with torch.inference_mode(), hooks(lm.model, per_layer):
                    logp = torch.log_softmax(lm.model(ids).logits.float(), dim=-1)[0]
                pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(cont))
                rows.append(logp[pos].gather(1, torch.tensor(cont)[:, None])[:, 0].numpy())
            results.append(np.stack(rows))
    seconds = time.perf_counter() - t
    n_tokens = sum(len(c) for _, c in items) * len(cells)
    np.savez(out, *results)
    print(json.dumps({"seconds": seconds, "tokens": n_tokens,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--responses", type=int, default=6)
    p.add_argument("--tokens", type=int, default=40, help="response tokens generated per response")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child[0], a.responses, a.tokens, a.threads, a.child[1])
        return
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="animacy-collect-bench-"))
    res = {}
    for which in ("naive", "project"):
        out = work / f"{which}.npz"
        r = subprocess.run([sys.executable, __file__, "--responses", str(a.responses), "--tokens", str(a.tokens),
                            "--threads", str(a.threads), "--child", which, str(out)], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        res[which] = json.loads(r.stdout.strip().splitlines()[-1])
        res[which]["arrays"] = np.load(out)
    diff = max(float(np.max(np.abs(res["naive"]["arrays"][k] - res["project"]["arrays"][k])))
               for k in res["naive"]["arrays"].files)
    print(f"sweep: {a.responses} responses x {DERIVATIONS} derivations x {len(MAGNITUDES)} magnitudes, "
          f"layers {list(LAYERS)}, {a.threads} threads, {res['project']['tokens']:,} steered tokens")
    for which in ("naive", "project"):
        r = res[which]
        rate = r["tokens"] / r["seconds"]
        print(f"{which:8s} {r['seconds']:7.1f} s   {rate:8.0f} tokens/s   peak {r['peak_mb']:6.0f} MB")
    speed = (res["project"]["tokens"] / res["project"]["seconds"]) / (res["naive"]["tokens"] / res["naive"]["seconds"])
    print(f"project / naive tokens/s: {speed:.2f}x   max |difference| of log-probs: {diff:.1e}")
    cost = {}
    for which in ("score", "monitor"):
        r = subprocess.run([sys.executable, __file__, "--responses", str(a.responses), "--tokens", str(a.tokens),
                            "--threads", str(a.threads), "--child", which, str(work / "x")], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        cost[which] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"scoring{' + monitoring' if which == 'monitor' else '':13s} {cost[which]['seconds']:7.3f} s   "
              f"{cost[which]['tokens'] / cost[which]['seconds']:8.0f} tokens/s   peak {cost[which]['peak_mb']:6.0f} MB")
    print(f"monitoring costs {100 * (cost['monitor']['seconds'] / cost['score']['seconds'] - 1):+.1f}% of scoring time "
          "(4 directions at 2 layers)")


if __name__ == "__main__":
    main()
