"""`animacy collect run|plan`: the collector's command line (imported only by those subcommands)."""

from __future__ import annotations

import time
from pathlib import Path

from animacy.collect.config import load_config
from animacy.errors import ConfigError


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n'; else, in a SLURM job array, the task's place in it (id - min of count); else the whole study."""
    import os

    env = os.environ
    if text is None and "SLURM_ARRAY_TASK_ID" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        text = f"{int(env['SLURM_ARRAY_TASK_ID']) - first}/{env.get('SLURM_ARRAY_TASK_COUNT', '1')}"
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise ConfigError("--shard", f"expected i/n, got {text!r}") from exc
    if not 0 <= i < n:
        raise ConfigError("--shard", f"shard {i} is not in 0..{n - 1}")
    return i, n


def run(config: str, out: str, shard: str | None, quiet: bool, allow_config_change: str | None = None) -> Path:
    from animacy.collect.runner import Runner

    t = time.perf_counter()
    allowed = tuple(k.strip() for k in (allow_config_change or "").split(",") if k.strip())
    path = Runner(load_config(config), out, parse_shard(shard), quiet, allow_config_change=allowed).run()
    print(f"collected {path} in {time.perf_counter() - t:.0f} s")
    return path


def plan_for(config: str, device_profile: str, model_shape: str | None = None,
             response_tokens: int | None = None) -> dict:
    """The plan on a named card from stored rates and FLOP counts (collect/plan.py): printed; a study that
    does not fit the card is refused after the plan is shown (exit 2)."""
    from animacy.collect import plan as planning
    from animacy.collect.study_roles import study_roles

    cfg = load_config(config)
    roles = study_roles(cfg)
    shape = planning.model_shape(cfg, model_shape)
    profile = planning.load_profile(device_profile)
    result = planning.estimate(cfg, len(roles), int((~roles["is_control"]).sum()), shape, profile, response_tokens)
    print(planning.report(result))
    planning.check_memory(cfg, shape, profile["memory_gib"], profile["card"])
    return result


def plan(config: str) -> dict:
    """Job counts, token counts and a time estimate for the model on this device (measured)."""
    import torch

    from animacy.collect.backend import TransformersBackend
    from animacy.collect.model import load_model
    from animacy.collect.study_roles import study_roles

    cfg = load_config(config)
    roles = study_roles(cfg)
    n_roles, n_steered = len(roles), int((~roles["is_control"]).sum())
    responses = n_roles * len(cfg.tasks) * cfg.replicates
    steered_responses = n_steered * len(cfg.tasks) * cfg.replicates
    prompt_len, gen = 40, cfg.max_new_tokens
    steer_rows = len(cfg.derivations) * len(cfg.magnitudes) + len(cfg.cap_taus)
    scored = responses * 2 * (prompt_len + gen)
    steered = steered_responses * steer_rows * (prompt_len + (cfg.score_tokens or gen))
    lm = load_model(cfg.model_source, cfg.model_revision, cfg.dtype, cfg.device)
    be = TransformersBackend(lm.model, lm.tokenizer)
    ids = list(range(10, 10 + prompt_len))
    be.score_batch([ids] * 4, [ids[:gen]] * 4)  # warm-up
    t = time.perf_counter()
    be.score_batch([ids] * 4, [list(range(gen))] * 4)
    tps = 4 * (prompt_len + gen) / (time.perf_counter() - t)
    t = time.perf_counter()
    be.generate(ids, 16, 1.0, 0)
    per_token = (time.perf_counter() - t) / 16
    seconds = responses * gen * per_token + (scored + steered) / tps
    info = {"roles": n_roles, "steered_roles": n_steered, "tasks": len(cfg.tasks), "replicates": cfg.replicates,
            "responses": responses, "jobs": 2 * n_roles + 1 + 2 * n_steered,
            "generated_tokens_max": responses * gen, "scored_tokens_approx": scored, "steered_tokens_approx": steered,
            "device": cfg.device if cfg.device != "cuda" else torch.cuda.get_device_name(),
            "measured_scoring_tokens_per_s": round(tps), "measured_decode_s_per_token": round(per_token, 4),
            "estimated_minutes": round(seconds / 60, 1)}
    for k, v in info.items():
        print(f"{k:32s} {v:,}" if isinstance(v, int) else f"{k:32s} {v}")
    return info
