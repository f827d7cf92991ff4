"""How long a study takes on a GPU, and whether it fits in the card's memory, worked out before any work
from FLOP counts, bytes moved and the rates `benchmarks/gpu.py` measured (`data/device_profiles.json`,
with the card and date; profiles not measured say how they were derived).

- Scoring, steering, capping and ablation are compute-bound: FLOPs per token (2 x the parameters a token
  passes through, plus attention over its context) over the card's bf16 rate times the model FLOPs
  utilisation measured for that model (or for its kind: dense, mixture of experts).
- Generation is bound by the bytes each decoding step reads: the weights once, and every sequence's KV
  cache (a sliding-window layer's at most its window). A step of a batch of b takes the time those bytes
  take at the rate measured for the model (`generation_tok_s` at its `generation_batch` and context), else
  at the card's bandwidth x the efficiency measured on the other models; never less than its FLOPs take.
  Each job's responses are generated in batches of `generation_batch` and a remainder, each as long as
  the responses (`--response-tokens`, else `max_new_tokens`, an upper bound).
- Without a named card, the profile is measured now on the study's own device, model and batch sizes
  (`measure_here`): the same estimate, from this machine's rates.
- Memory: the weights, plus the KV cache of a generation batch, plus the activations of a scoring batch
  (and the float32 copies of the captured layers) must fit in 90% of the card; otherwise the study is
  refused with the numbers, by `plan` and by `run` (on CUDA), before any work.

>>> shape = Shape.named("gemma3-27b")
>>> round(shape.params_total / 1e9, 1), shape.moe
(27.0, False)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from animacy.collect.config import StudyConfig
from animacy.collect.study_roles import role_groups
from animacy.errors import ConfigError
from animacy.resources import resource

PROFILES = resource("animacy.data", "device_profiles.json")
PROMPT_TOKENS = 40  # system prompt + task, rendered (the demo's prompts are 30-45 tokens)
USER_TOKENS = 20  # a user's turn in a conversation, rendered
GEN_CONTEXT = 128  # the mean context of benchmarks/gpu.py's generation (64-token prompts, 128 new tokens)
USABLE = 0.9  # the share of the card's memory a study may plan to use
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# model shapes by name (Hugging Face config keys); benchmarks/gpu.py builds its random-weight models from them
SHAPES: dict[str, tuple[str, dict]] = {
    "tiny": ("LlamaConfig", dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096)),
    "smollm2": ("LlamaConfig", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                    num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                                    max_position_embeddings=8192)),
    "llama3-8b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                      rope_theta=500000.0, max_position_embeddings=8192)),
    "gemma3-27b": ("Gemma3TextConfig", dict(vocab_size=262208, hidden_size=5376, intermediate_size=21504,
                                            num_hidden_layers=62, num_attention_heads=32, num_key_value_heads=16,
                                            head_dim=128, sliding_window=1024, query_pre_attn_scalar=168,
                                            layer_types=["full_attention" if (k + 1) % 6 == 0 else
                                                         "sliding_attention" for k in range(62)],
                                            tie_word_embeddings=True, max_position_embeddings=131072)),
    "qwen3-30b-a3b": ("Qwen3MoeConfig", dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                                             moe_intermediate_size=768, num_hidden_layers=48, num_attention_heads=32,
                                             num_key_value_heads=4, head_dim=128, num_experts=128,
                                             num_experts_per_tok=8, max_position_embeddings=40960)),
}


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a model: its sizes (from a Hugging Face config)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    intermediate: int
    experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    tied: bool = False
    window: int = 0  # a sliding-window layer's KV cache holds at most this many tokens
    sliding_layers: int = 0

    @classmethod
    def from_config(cls, name: str, c: dict) -> Shape:
        heads, layers = c["num_attention_heads"], c["num_hidden_layers"]
        window = 0 if c.get("use_sliding_window") is False else c.get("sliding_window") or 0
        types = c.get("layer_types")  # else every layer slides where there is a window (Mistral)
        sliding = 0 if not window else sum(t == "sliding_attention" for t in types) if types else layers
        return cls(name, layers, c["hidden_size"], heads, c.get("num_key_value_heads") or heads,
                   c.get("head_dim") or c["hidden_size"] // heads, c["vocab_size"], c.get("intermediate_size", 0),
                   c.get("num_experts") or c.get("num_local_experts") or 0, c.get("num_experts_per_tok") or 0,
                   c.get("moe_intermediate_size") or 0, bool(c.get("tie_word_embeddings", False)), window, sliding)

    @classmethod
    def named(cls, name: str) -> Shape:
        if name not in SHAPES:
            raise ConfigError("--model-shape", f"unknown model shape '{name}' (known: {', '.join(SHAPES)})")
        return cls.from_config(name, SHAPES[name][1])

    @property
    def moe(self) -> bool:
        return self.experts > 0

    def _attention(self) -> int:
        q = self.heads * self.head_dim
        return self.hidden * q + 2 * self.hidden * self.kv_heads * self.head_dim + q * self.hidden

    def _mlp(self, active: bool) -> int:
        if not self.moe:
            return 3 * self.hidden * self.intermediate
        n = self.experts_per_token if active else self.experts
        return n * 3 * self.hidden * self.moe_intermediate + self.hidden * self.experts

    @property
    def params_total(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * (self._attention() + self._mlp(False))

    def flops_per_token(self, context: float = 0.0) -> float:
        """2 x the parameters a token passes through (the LM head included, the embedding lookup not; for a
        mixture of experts only its routed experts), plus attention's own FLOPs over `context` tokens."""
        active = self.layers * (self._attention() + self._mlp(True)) + self.vocab * self.hidden
        return 2.0 * active + 4.0 * self.layers * context * self.heads * self.head_dim

    def kv_bytes(self, context: float, nbytes: int) -> float:
        """Bytes of one sequence's KV cache at `context` tokens (a sliding-window layer holds the window's
        last tokens but one, as transformers' cache does)."""
        held = (self.layers - self.sliding_layers) * context + self.sliding_layers * min(context, self.window - 1)
        return 2 * self.kv_heads * self.head_dim * nbytes * held


def model_shape(cfg: StudyConfig, name: str | None = None) -> Shape:
    """The study model's shape: a named one, else its config.json (a local folder, the embedded SmolLM2, or a
    hub id already in the local cache; nothing is downloaded)."""
    if name:
        return Shape.named(name)
    if cfg.model_source == "smollm2":
        return Shape.named("smollm2")
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(cfg.model_source, revision=cfg.model_revision, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError("model.source", f"cannot read the config of {cfg.model_source!r} locally ({exc})",
                          hint=f"Name its shape with --model-shape ({', '.join(SHAPES)}).") from exc
    text = c.get_text_config() if hasattr(c, "get_text_config") else c
    return Shape.from_config(cfg.model_source, text.to_dict())


def load_profile(name: str, path: Path = PROFILES) -> dict:
    """A device profile; a derived one is its source's numbers times the stated ratios."""
    profiles = json.loads(Path(path).read_text())
    if name not in profiles or name.startswith("_"):
        known = ", ".join(k for k in profiles if not k.startswith("_"))
        raise ConfigError("--device-profile", f"unknown device profile '{name}' (known: {known})")
    p = dict(profiles[name])
    if "derive_from" in p:
        base = load_profile(p["derive_from"], path)
        c, b = p["compute_ratio"], p["bandwidth_ratio"]
        p["peak_tflops_bf16"] = base["peak_tflops_bf16"] * c
        p["defaults"] = base["defaults"]
        p["models"] = {m: {**r, "scoring_tok_s": r["scoring_tok_s"] * c, "steering_tok_s": r["steering_tok_s"] * c,
                           "generation_tok_s": r["generation_tok_s"] * b} for m, r in base["models"].items()}
    return p


def timed(fn, device: str, repeats: int = 1) -> float:
    """Seconds per call of `fn`, after one warm-up call (synchronised on CUDA)."""
    import time

    import torch

    fn()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def measure_rates(backend, seqs: list[list[int]], split: int, sweep, gen_prompts: list[list[int]], gen_tokens: int,
                  repeats: int = 1) -> dict:
    """The rates a profile holds, measured on `backend` (each call timed after a warm-up): scored tokens/s
    of `seqs` in one batch (the first `split` tokens the prompt), steered continuation tokens/s of one
    sweep of the first sequence under `sweep` (one row per coefficient), and generated tokens/s of
    `generate_many` on `gen_prompts` (counter-seeded sampling at temperature 1, never stopping early)."""
    from animacy.collect.backend import Sampling

    device = backend.device
    t_score = timed(lambda: backend.score_batch([q[:split] for q in seqs], [q[split:] for q in seqs]), device,
                    repeats)
    t_sweep = timed(lambda: backend.score(seqs[0][:split], seqs[0][split:], sweep), device, repeats)
    eos, backend.eos = backend.eos, set()
    try:
        seeds = list(range(len(gen_prompts)))
        t_gen = timed(lambda: backend.generate_many(gen_prompts, seeds, Sampling(1.0, max_tokens=gen_tokens)),
                      device, 1)
    finally:
        backend.eos = eos
    n = len(gen_prompts)
    return {"scoring_tok_s": sum(map(len, seqs)) / t_score, "sweep_seconds": t_sweep,
            "steering_tok_s": len(sweep.coeffs) * (len(seqs[0]) - split) / t_sweep,
            "generation_tok_s": n * gen_tokens / t_gen, "generation_batch": n,
            "generation_context": len(gen_prompts[0]) + gen_tokens / 2}


def measure_here(cfg: StudyConfig, shape: Shape, response_tokens: int | None = None) -> dict:
    """A profile measured now on the study's own device, with its model, dtype and batch sizes: scoring a
    batch of `max_batch_tokens`, a sweep of its derivations x magnitudes at its steered layers, and
    generating `generation_batch` responses (random token ids: speed does not depend on them)."""
    import datetime
    import os

    import torch

    from animacy.collect.backend import Intervention, TransformersBackend
    from animacy.collect.model import load_model

    lm = load_model(cfg.model_source, cfg.model_revision, cfg.dtype, cfg.device, experts=cfg.experts)
    backend = TransformersBackend(lm.model, lm.tokenizer, cfg.generation_batch)
    R = min(response_tokens or cfg.max_new_tokens, 256)  # enough to measure a rate
    seq = PROMPT_TOKENS + R
    gen = torch.Generator().manual_seed(0)
    rows = max(1, cfg.max_batch_tokens // seq)
    seqs = torch.randint(10, shape.vocab, (rows, seq), generator=gen).tolist()
    cells = max(1, len(cfg.derivations) * sum(m != 0 for m in cfg.magnitudes))
    layers = cfg.steer_layers or [shape.layers // 2]
    V = torch.nn.functional.normalize(torch.randn(cells, shape.hidden, generator=gen), dim=1).to(lm.device)
    sweep = Intervention("add", {k: V for k in layers}, torch.linspace(0.5, 1.0, cells), cfg.position_mode)
    steps = min(R, 32)
    prompts = torch.randint(10, shape.vocab, (cfg.generation_batch, PROMPT_TOKENS), generator=gen).tolist()
    rates = measure_rates(backend, seqs, PROMPT_TOKENS, sweep, prompts, steps)
    if lm.device.type == "cuda":
        card, memory_gib = torch.cuda.get_device_name(), torch.cuda.mem_get_info()[1] / 2**30
    else:
        card = f"{lm.device.type} ({torch.get_num_threads()} threads)"
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rates.pop("sweep_seconds")
    return {"card": card, "memory_gib": memory_gib, "peak_tflops_bf16": None,
            "source": f"measured now ({datetime.date.today()}) with {cfg.model_source} in {cfg.dtype}: scoring "
                      f"{rows} x {seq} tokens, a sweep of {cells} rows, generating {cfg.generation_batch} x {steps}",
            "models": {shape.name: rates}}


@dataclass
class Stage:
    name: str
    tokens: float
    flops: float
    seconds: float
    rate: str  # how the time was worked out


def _batches(n: int, batch: int) -> list[int]:
    """The batch sizes `n` sequences are generated in: full batches of `batch`, then the remainder."""
    return [batch] * (n // batch) + ([n % batch] if n % batch else [])


def estimate(cfg: StudyConfig, n_roles: int, n_steered: int, shape: Shape, profile: dict,
             response_tokens: int | None = None) -> dict:
    """Stages with their tokens, FLOPs and seconds; the memory check; the total and the dominant stage."""
    R = response_tokens or cfg.max_new_tokens
    P = PROMPT_TOKENS
    nbytes = BYTES.get(cfg.dtype, 2)
    responses = n_roles * len(cfg.tasks) * cfg.replicates
    steered = n_steered * len(cfg.tasks) * cfg.replicates
    measured = profile.get("models", {}).get(shape.name)
    d = profile.get("defaults") or {}
    if measured:  # the measured MFU x the peak, where a peak is known, is the same rate
        flops_rate = measured["scoring_tok_s"] * shape.flops_per_token()
        steer_ratio = measured["steering_tok_s"] / measured["scoring_tok_s"]
        how = f"{measured['scoring_tok_s']:,.0f} scored tok/s measured for {shape.name}"
    else:
        mfu = d["scoring_mfu_moe" if shape.moe else "scoring_mfu_dense"]
        flops_rate, steer_ratio = profile["peak_tflops_bf16"] * 1e12 * mfu, d["steering_over_scoring"]
        how = f"MFU {mfu:.2f} (measured on its kind)"
    if measured and profile.get("peak_tflops_bf16"):
        how = f"MFU {flops_rate / (profile['peak_tflops_bf16'] * 1e12):.2f} (measured for {shape.name})"
    steer_rate = flops_rate * steer_ratio

    def step_bytes(batch: int, context: float) -> float:
        return shape.params_total * nbytes + batch * shape.kv_bytes(context, nbytes)

    def step_seconds(batch: int, context: float) -> float:
        """One decoding step of `batch` sequences at `context` tokens: its bytes at the measured (or the
        card's) rate, or its FLOPs, whichever takes longer."""
        if measured:
            mb, mctx = measured["generation_batch"], measured.get("generation_context", GEN_CONTEXT)
            t = mb / measured["generation_tok_s"] * step_bytes(batch, context) / step_bytes(mb, mctx)
        else:
            t = step_bytes(batch, context) / (d["generation_bandwidth_efficiency"] * profile["bandwidth_tb_s"] * 1e12)
        return max(t, batch * shape.flops_per_token(context) / flops_rate)

    def generation(name: str, per_job: list[int], repeats: int, steps: int, context: float) -> Stage:
        """Jobs of `per_job` sequences each, generated `repeats` times (magnitudes, arms x turns), `steps`
        tokens long, `generation_batch` at a time."""
        sizes = [_batches(n, cfg.generation_batch) for n in per_job]
        seconds = repeats * steps * sum(step_seconds(b, context) for job in sizes for b in job)
        tokens = repeats * steps * sum(per_job)
        rate = tokens / seconds if seconds else 0.0
        if measured:
            note = f"{rate:,.0f} tok/s from {measured['generation_tok_s']:,.0f} measured at batch " \
                   f"{measured['generation_batch']}"
        else:
            note = f"{rate:,.0f} tok/s from bandwidth x efficiency {d['generation_bandwidth_efficiency']}"
        note += f"; batches of {'/'.join(map(str, sorted({b for job in sizes for b in job}, reverse=True)))}"
        if cfg.generator == "vllm" and name == "generation":
            note += " (vLLM not measured: the transformers rate, an upper bound on time)"
        if cfg.compile_decoding:
            note += " (compile_decoding is on but not measured: an upper bound on time)"
        return Stage(name, tokens, tokens * shape.flops_per_token(context), seconds, note)

    per_role = len(cfg.tasks) * cfg.replicates
    jobs = role_groups(list(range(n_roles)), per_role, cfg.generation_batch)  # as the runner groups them
    stages = [generation("generation", [len(g) * per_role for g in jobs], 1, R, P + R / 2)]
    score_tokens = responses * 2 * (P + R)
    score_flops = score_tokens * shape.flops_per_token((P + R) / 2)
    stages.append(Stage("scoring (with and without the prompt)", score_tokens, score_flops, score_flops / flops_rate,
                        how))
    S = min(cfg.score_tokens or R, R)
    first = min(cfg.steer_layers) if cfg.steer_layers else 0
    share = (shape.layers - first) / shape.layers  # a sweep runs the layers below the first steered one once
    per_seq = (P + S) * shape.flops_per_token((P + S) / 2)
    rows = {"steering sweeps": len(cfg.derivations) * sum(m != 0 for m in cfg.magnitudes),
            "capping": len(cfg.cap_taus), "ablation (with the prompt)": 2 if cfg.ablate else 0}
    for name, n in rows.items():
        if n:
            flops = steered * per_seq * (n * share + (1 if name == "steering sweeps" else 0))
            stages.append(Stage(name, steered * n * (P + S), flops, flops / steer_rate,
                                f"{how}, x {steer_ratio:.2f} for sweeps"))
    if cfg.word_guess_prompt:  # per steered role: the role word (a token or two) after the prompt, in a sweep
        rows_wg = 1 + len(cfg.derivations) * len(cfg.magnitudes)
        flops = n_steered * rows_wg * (P + 2) * shape.flops_per_token(P / 2)
        stages.append(Stage("word guess", n_steered * rows_wg * (P + 2), flops, flops / steer_rate,
                            f"{how}, x {steer_ratio:.2f} for sweeps"))
    conv = cfg.conversations
    if conv:
        arms = 1 + len(conv.cap_taus) + int(conv.ablate)
        n = len(conv.roles) if conv.roles is not None else n_roles - 1  # default: every role but the no-prompt pass
        groups = [len(g) * conv.replicates for g in role_groups(list(range(n)), conv.replicates, cfg.generation_batch)]
        turns = conv.n_turns + (0 if conv.scripted else conv.n_turns - 1)  # a user model writes all but the first
        context = P + (conv.n_turns - 1) / 2 * (USER_TOKENS + conv.max_new_tokens) + conv.max_new_tokens / 2
        stages.append(generation("conversations", groups, arms * turns, conv.max_new_tokens, context))
    for t in cfg.traits:
        if t.magnitudes:
            stages.append(generation(f"trait-steered generation ({t.name})",
                                     [len(t.questions or cfg.tasks) * cfg.replicates], len(t.magnitudes), R, P + R / 2))
    total = sum(s.seconds for s in stages)
    return {"stages": stages, "total_seconds": total, "dominant": max(stages, key=lambda s: s.seconds).name,
            "memory": memory(cfg, shape, profile["memory_gib"], R), "profile": profile, "shape": shape,
            "responses": responses, "response_tokens": R}


def generation_batches(cfg: StudyConfig, response_tokens: int) -> list[tuple[int, float]]:
    """(largest batch, longest context) of each kind of generation job: a group of roles' responses, a
    trait's questions at one magnitude, and a group's conversations at their last turn."""
    out = [(cfg.generation_batch, PROMPT_TOKENS + response_tokens)]  # roles grouped into full batches
    out += [(min(cfg.generation_batch, len(t.questions or cfg.tasks) * cfg.replicates), PROMPT_TOKENS + response_tokens)
            for t in cfg.traits if t.magnitudes]
    conv = cfg.conversations
    if conv:
        out.append((cfg.generation_batch, PROMPT_TOKENS + conv.n_turns * (USER_TOKENS + conv.max_new_tokens)))
    return out


def memory(cfg: StudyConfig, shape: Shape, card_gib: float, response_tokens: int | None = None) -> dict:
    """GiB the study needs at its peak in generation and in scoring, against 90% of `card_gib`."""
    R = response_tokens or cfg.max_new_tokens
    nbytes = BYTES.get(cfg.dtype, 2)
    gib = 2.0**30
    weights = shape.params_total * nbytes / gib
    kv = max(batch * shape.kv_bytes(context, nbytes) for batch, context in generation_batches(cfg, R)) / gib
    width = shape.hidden * 4 + max(shape.intermediate, shape.moe_intermediate * max(shape.experts_per_token, 1)) * 3
    activations = cfg.max_batch_tokens * width * nbytes / gib
    captured = len(cfg.capture_layers) * cfg.max_batch_tokens * shape.hidden * 4 / gib
    logits = 2 * 256 * shape.vocab * 4 / gib
    need = {"weights": weights, "generation (weights + KV cache)": weights + kv,
            "scoring (weights + activations + captured layers)": weights + activations + captured + logits}
    usable = USABLE * card_gib
    return {"card_gib": card_gib, "usable_gib": usable, "need_gib": need, "fits": max(need.values()) <= usable}


def check_memory(cfg: StudyConfig, shape: Shape, card_gib: float, card: str) -> None:
    """Refuse a study that cannot fit the card at its batch sizes, with the numbers (exit 2)."""
    m = memory(cfg, shape, card_gib)
    if m["fits"]:
        return
    worst = max(m["need_gib"], key=m["need_gib"].get)
    batch = max(b for b, _ in generation_batches(cfg, cfg.max_new_tokens))
    raise ConfigError(cfg.path, f"{cfg.model_source} does not fit {card} ({card_gib:.0f} GiB, {m['usable_gib']:.0f} "
                      f"usable) at the configured batch sizes: {worst} needs {m['need_gib'][worst]:.1f} GiB (weights "
                      f"{m['need_gib']['weights']:.1f} GiB, generation batches of up to {batch} at generation_batch "
                      f"{cfg.generation_batch}, max_batch_tokens "
                      f"{cfg.max_batch_tokens:,})",
                      column="model.generation_batch" if worst.startswith("generation") else "model.max_batch_tokens",
                      hint="Lower model.generation_batch or model.max_batch_tokens, or use a larger card.")


def report(plan: dict) -> str:
    """The plan as text: one line per stage, the total, what dominates, the memory check."""
    p, shape = plan["profile"], plan["shape"]
    unit, per = ("hours", 3600) if plan["total_seconds"] >= 7200 else ("minutes", 60)
    lines = [f"card: {p['card']}  ({p['source']})",
             f"model: {shape.name}, {shape.params_total / 1e9:.1f}B parameters"
             f"{' (mixture of experts)' if shape.moe else ''}; "
             f"{plan['responses']:,} responses of up to {plan['response_tokens']:,} tokens",
             f"{'stage':40s} {'tokens':>14s} {'PFLOP':>10s} {unit:>8s}  how"]
    for s in plan["stages"]:
        lines.append(f"{s.name:40s} {s.tokens:14,.0f} {s.flops / 1e15:10.1f} {s.seconds / per:8.2f}  {s.rate}")
    lines.append(f"{'total':40s} {'':14s} {'':10s} {plan['total_seconds'] / per:8.2f}  "
                 f"(dominated by {plan['dominant']})")
    m = plan["memory"]
    need = ", ".join(f"{k} {v:.1f}" for k, v in m["need_gib"].items())
    lines.append(f"memory (GiB): {need}; usable {m['usable_gib']:.0f} of {m['card_gib']:.0f}: "
                 f"{'fits' if m['fits'] else 'DOES NOT FIT'}")
    return "\n".join(lines)
