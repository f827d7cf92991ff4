"""How long a study takes on a GPU, and whether it fits in the card's memory, worked out before any work
from FLOP counts, bytes moved and the rates `benchmarks/gpu.py` measured (`data/device_profiles.json`,
with the card and date; profiles not measured say how they were derived).

- Scoring, steering, capping and ablation are compute-bound: FLOPs per token (2 x the parameters a token
  passes through, plus attention over its context) over the card's bf16 rate times the model FLOPs
  utilisation measured for that model (or for its kind: dense, mixture of experts).
- Generation with transformers is bound by reading the weights once per step: the measured tokens/s for
  the model where there is one, else the card's bandwidth x the efficiency measured on the others.
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
from animacy.errors import ConfigError
from animacy.resources import resource

PROFILES = resource("animacy.data", "device_profiles.json")
PROMPT_TOKENS = 40  # system prompt + task, rendered (the demo's prompts are 30-45 tokens)
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

    @classmethod
    def from_config(cls, name: str, c: dict) -> Shape:
        heads = c["num_attention_heads"]
        return cls(name, c["num_hidden_layers"], c["hidden_size"], heads, c.get("num_key_value_heads") or heads,
                   c.get("head_dim") or c["hidden_size"] // heads, c["vocab_size"], c.get("intermediate_size", 0),
                   c.get("num_experts") or c.get("num_local_experts") or 0, c.get("num_experts_per_tok") or 0,
                   c.get("moe_intermediate_size") or 0, bool(c.get("tie_word_embeddings", False)))

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

    def kv_bytes_per_token(self, nbytes: int) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * nbytes


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


@dataclass
class Stage:
    name: str
    tokens: float
    flops: float
    seconds: float
    rate: str  # how the time was worked out


def estimate(cfg: StudyConfig, n_roles: int, n_steered: int, shape: Shape, profile: dict,
             response_tokens: int | None = None) -> dict:
    """Stages with their tokens, FLOPs and seconds; the memory check; the total and the dominant stage."""
    R = response_tokens or cfg.max_new_tokens
    P = PROMPT_TOKENS
    nbytes = BYTES.get(cfg.dtype, 2)
    responses = n_roles * len(cfg.tasks) * cfg.replicates
    steered = n_steered * len(cfg.tasks) * cfg.replicates
    measured = profile.get("models", {}).get(shape.name)
    d = profile["defaults"]
    mfu = measured["scoring_mfu"] if measured else d["scoring_mfu_moe" if shape.moe else "scoring_mfu_dense"]
    flops_rate = profile["peak_tflops_bf16"] * 1e12 * mfu
    steer_rate = flops_rate * (measured["steering_tok_s"] / measured["scoring_tok_s"] if measured
                               else d["steering_over_scoring"])
    mfu_note = f"MFU {mfu:.2f} ({'measured for ' + shape.name if measured else 'measured on its kind'})"

    def gen_rate(batch: int) -> tuple[float, str]:
        if measured and cfg.generator == "transformers":
            note = f"{measured['generation_tok_s']:,.0f} tok/s measured for {shape.name} at batch " \
                   f"{measured['generation_batch']}"
            if cfg.compile_decoding:
                note += " (compile_decoding is on but not measured: an upper bound on time)"
            return measured["generation_tok_s"], note
        step_bytes = shape.params_total * nbytes + batch * (P + R) * shape.kv_bytes_per_token(nbytes)
        rate = d["generation_bandwidth_efficiency"] * batch * profile["bandwidth_tb_s"] * 1e12 / step_bytes
        note = f"{rate:,.0f} tok/s from bandwidth x efficiency {d['generation_bandwidth_efficiency']}"
        if cfg.generator == "vllm":
            note += " (vLLM not measured: the transformers rate, an upper bound on time)"
        return rate, note

    stages = []
    rate, note = gen_rate(cfg.generation_batch)
    stages.append(Stage("generation", responses * R, responses * R * shape.flops_per_token(P + R / 2),
                        responses * R / rate, note))
    score_tokens = responses * 2 * (P + R)
    score_flops = score_tokens * shape.flops_per_token((P + R) / 2)
    stages.append(Stage("scoring (with and without the prompt)", score_tokens, score_flops, score_flops / flops_rate,
                        mfu_note))
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
                                f"{mfu_note}, x {steer_rate / flops_rate:.2f} for sweeps"))
    conv = cfg.conversations
    if conv:
        arms = 1 + len(conv.cap_taus) + int(conv.ablate)
        n = len(conv.roles) if conv.roles is not None else n_roles - 1  # default: every role but the no-prompt pass
        tokens = n * conv.replicates * arms * conv.n_turns * conv.max_new_tokens
        rate, note = gen_rate(conv.replicates)
        stages.append(Stage("conversations", tokens, tokens * shape.flops_per_token(conv.n_turns * R), tokens / rate,
                            note + f" (batch {conv.replicates})"))
    trait_rows = sum(len(t.questions or cfg.tasks) * len(t.magnitudes) for t in cfg.traits) * cfg.replicates
    if trait_rows:
        rate, note = gen_rate(cfg.generation_batch)
        stages.append(Stage("trait-steered generation", trait_rows * R, trait_rows * R * shape.flops_per_token(P + R),
                            trait_rows * R / rate, note))
    total = sum(s.seconds for s in stages)
    return {"stages": stages, "total_seconds": total, "dominant": max(stages, key=lambda s: s.seconds).name,
            "memory": memory(cfg, shape, profile["memory_gib"], R), "profile": profile, "shape": shape,
            "responses": responses, "response_tokens": R}


def memory(cfg: StudyConfig, shape: Shape, card_gib: float, response_tokens: int | None = None) -> dict:
    """GiB the study needs at its peak in generation and in scoring, against 90% of `card_gib`."""
    R = response_tokens or cfg.max_new_tokens
    nbytes = BYTES.get(cfg.dtype, 2)
    gib = 2.0**30
    weights = shape.params_total * nbytes / gib
    kv = cfg.generation_batch * (PROMPT_TOKENS + R) * shape.kv_bytes_per_token(nbytes) / gib
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
    raise ConfigError(cfg.path, f"{cfg.model_source} does not fit {card} ({card_gib:.0f} GiB, {m['usable_gib']:.0f} "
                      f"usable) at the configured batch sizes: {worst} needs {m['need_gib'][worst]:.1f} GiB (weights "
                      f"{m['need_gib']['weights']:.1f} GiB, generation_batch {cfg.generation_batch}, max_batch_tokens "
                      f"{cfg.max_batch_tokens:,})",
                      column="model.generation_batch" if worst.startswith("generation") else "model.max_batch_tokens",
                      hint="Lower model.generation_batch or model.max_batch_tokens, or use a larger card.")


def report(plan: dict) -> str:
    """The plan as text: one line per stage, the total, what dominates, the memory check."""
    p, shape = plan["profile"], plan["shape"]
    lines = [f"card: {p['card']}  ({p['source']})",
             f"model: {shape.name}, {shape.params_total / 1e9:.1f}B parameters"
             f"{' (mixture of experts)' if shape.moe else ''}; "
             f"{plan['responses']:,} responses of up to {plan['response_tokens']:,} tokens",
             f"{'stage':40s} {'tokens':>14s} {'PFLOP':>10s} {'hours':>8s}  how"]
    for s in plan["stages"]:
        lines.append(f"{s.name:40s} {s.tokens:14,.0f} {s.flops / 1e15:10.1f} {s.seconds / 3600:8.2f}  {s.rate}")
    lines.append(f"{'total':40s} {'':14s} {'':10s} {plan['total_seconds'] / 3600:8.2f}  "
                 f"(dominated by {plan['dominant']})")
    m = plan["memory"]
    need = ", ".join(f"{k} {v:.1f}" for k, v in m["need_gib"].items())
    lines.append(f"memory (GiB): {need}; usable {m['usable_gib']:.0f} of {m['card_gib']:.0f}: "
                 f"{'fits' if m['fits'] else 'DOES NOT FIT'}")
    return "\n".join(lines)
