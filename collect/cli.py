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


def plan(config: str, device_profile: str | None = None, model_shape: str | None = None,
         response_tokens: int | None = None) -> dict:
    """The plan (collect/plan.py): every stage's tokens, FLOPs and time, from FLOP counts and the rates of
    a named card (stored: no torch needed), else of this device, measured now with the study's model and
    batch sizes. Printed; a study that does not fit the card is refused after the plan is shown (exit 2)."""
    from animacy.collect import plan as planning
    from animacy.collect.study_roles import study_roles

    if model_shape and not device_profile:
        raise ConfigError("--model-shape", "a named shape is for planning on a stored card's rates "
                          "(--device-profile); measured here, the plan uses the study's own model")
    cfg = load_config(config)
    roles = study_roles(cfg)
    shape = planning.model_shape(cfg, model_shape)
    profile = (planning.load_profile(device_profile) if device_profile
               else planning.measure_here(cfg, shape, response_tokens))
    result = planning.estimate(cfg, len(roles), int((~roles["is_control"]).sum()), shape, profile, response_tokens)
    print(planning.report(result))
    planning.check_memory(cfg, shape, profile["memory_gib"], profile["card"])
    return result
