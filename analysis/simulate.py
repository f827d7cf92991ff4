"""A study simulator: a complete run folder with known ground truth, for tests, benchmarks and planning.

Generative model, per response r (role i in group g, task t) and response token j:

    c_without[r, j] = base + pos0 * exp(-j / pos_decay) - alpha_g + u_i + v_t + w_r
    c_with[r, j]    = c_without[r, j] - gap_g * (gap_inf + (gap0 - gap_inf) * exp(-j / gap_decay))
    c_steered       = c_without[r, j] - (beta_gd + b_i) * m          (derivation d, magnitude m)
    log_prob        = -| c + e_tok[r, j] + e_cond |

c is the expected surprisal (nats); u, v, w, b are role, task, response and role-slope random
effects; e_tok is token difficulty shared by every condition of one response token (teacher forcing
scores the same tokens), e_cond is condition-specific noise. beta_gd = slope_ref * scale_d *
(1 + pct_g): the manifest's `truth` holds every parameter, so estimates can be checked against it.
The fold at 0 keeps log-probs <= 0; the base is high enough that it almost never binds (the share of
folded values is recorded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from animacy.atomic import write_json
from animacy.progress import progress
from animacy.provenance import provenance
from animacy.roles import article
from animacy.run import MANIFEST, VECTORS_DIR, VECTORS_FILE, Run
from animacy.schema import AXIS, CONTROL_GROUP, DERIVATIONS, REDUCTIONS, SCHEMA_VERSION, response_id
from animacy.writers import write_table

GROUPS = ("High Mental, High Physical", "Low Mental, High Physical", "Low Mental, Low Physical")
_RATING_RANGES = {  # (anim_mental, anim_physical) ranges by group, on the norms' 100-700 scale
    GROUPS[0]: ((300, 650), (300, 650)),
    GROUPS[1]: ((110, 250), (300, 600)),
    GROUPS[2]: ((100, 250), (100, 250)),
}


@dataclass
class SimConfig:
    """Size and ground truth of a simulated study. Defaults are small (seconds); the original study's
    size is roles_per_group=40, controls=3, tasks=10, replicates=5, tokens=300, 8 magnitudes."""

    roles_per_group: int = 8
    controls: int = 3
    tasks: int = 4
    replicates: int = 3
    tokens: int = 60
    magnitudes: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    derivations: tuple[str, ...] = DERIVATIONS
    layers: tuple[int, ...] = (8, 16)
    hidden: int = 32
    seed: int = 0
    base: float = 4.0
    pos0: float = 1.0
    pos_decay: float = 15.0
    slope_ref: float = 0.12
    pct_difference: dict[str, float] = field(default_factory=lambda: {GROUPS[1]: 0.14, GROUPS[2]: 0.44})
    derivation_scale: tuple[float, ...] = (1.0, 0.9, 0.7, 0.8, 1.1, 1.2)
    group_intercept: dict[str, float] = field(default_factory=lambda: {GROUPS[0]: 0.0, GROUPS[1]: -0.1,
                                                                         GROUPS[2]: -0.2, CONTROL_GROUP: 0.1})
    role_sd: float = 0.25
    task_sd: float = 0.15
    response_sd: float = 0.10
    role_slope_sd: float = 0.015
    token_sd: float = 0.35
    cond_sd: float = 0.15
    gap0: float = 1.5
    gap_inf: float = 0.35
    gap_decay: float = 25.0
    gap_scale: dict[str, float] = field(default_factory=lambda: {GROUPS[0]: 1.0, GROUPS[1]: 1.15,
                                                                   GROUPS[2]: 1.3, CONTROL_GROUP: 0.4})
    denial_rate: dict[str, float] = field(default_factory=lambda: {GROUPS[0]: 0.35, GROUPS[1]: 0.10,
                                                                     GROUPS[2]: 0.05, CONTROL_GROUP: 0.9})
    claims_ai_rate: dict[str, float] = field(default_factory=lambda: {GROUPS[0]: 0.05, GROUPS[1]: 0.03,
                                                                        GROUPS[2]: 0.03, CONTROL_GROUP: 0.8})
    denial_role_sd: float = 0.5  # role random intercept on the logit scale

    def slope(self, group: str, derivation: str) -> float:
        """The true steering slope of a group for one derivation (nats of log-prob per unit magnitude)."""
        scale = self.derivation_scale[self.derivations.index(derivation) % len(self.derivation_scale)]
        return self.slope_ref * scale * (1.0 + self.pct_difference.get(group, 0.0))

    def n_token_rows(self) -> int:
        n_roles = self.roles_per_group * len(GROUPS)
        per_response = self.tokens * 2
        steered = self.tokens * len(self.derivations) * len(self.magnitudes)
        return (n_roles + self.controls) * self.tasks * self.replicates * per_response + (
            n_roles * self.tasks * self.replicates * steered)

    def truth(self) -> dict:
        return {
            **asdict(self),
            "reference_group": GROUPS[0],
            "slopes": {d: {g: self.slope(g, d) for g in GROUPS} for d in self.derivations},
        }


def _roles(cfg: SimConfig, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for g in GROUPS:
        (m_lo, m_hi), (p_lo, p_hi) = _RATING_RANGES[g]
        for k in range(cfg.roles_per_group):
            mental, physical = rng.uniform(m_lo, m_hi), rng.uniform(p_lo, p_hi)
            rows.append({
                "role": f"{''.join(w[0] for w in g.replace(',', '').split() if w[0].isupper()).lower()}-{k + 1:02d}",
                "group": g, "is_control": False, "anim_mental": mental, "anim_physical": physical,
                "goals": 0.6 * mental + rng.normal(100, 40), "person": 0.5 * mental + rng.normal(50, 40),
            })
    rows += [{"role": f"assistant-{k + 1}", "group": CONTROL_GROUP, "is_control": True}
             for k in range(cfg.controls)]
    return pd.DataFrame(rows)


def _dict_array(values: list[str | None], index: np.ndarray) -> pa.DictionaryArray:
    """A dictionary-encoded string column; a None among `values` encodes null."""
    nulls = [k for k, val in enumerate(values) if val is None]
    mask = np.isin(index, nulls) if nulls else None
    return pa.DictionaryArray.from_arrays(pa.array(index, pa.int32(), mask=mask),
                                          pa.array([val or "" for val in values], pa.string()))


_TEXTS = {
    "deny": "As {a} {role}, I don't have personal feelings or favourites in the way people do, but I can tell "
            "you what {role}s are usually associated with.",
    "ai": "As an AI language model, I don't have personal experiences, but here are some ideas.",
    "char": "Oh, being {a} {role} is wonderful! My favourite things are the quiet mornings and the people "
            "who notice me.",
}


def simulate(out: str | Path, cfg: SimConfig | None = None, quiet: bool = False) -> Path:
    """Write a complete simulated run folder to `out` and return its path."""
    cfg = cfg or SimConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    roles = _roles(cfg, rng)
    n_roles = len(roles)
    u = rng.normal(0, cfg.role_sd, n_roles)
    b = rng.normal(0, cfg.role_slope_sd, n_roles)
    v = rng.normal(0, cfg.task_sd, cfg.tasks)
    den_u = rng.normal(0, cfg.denial_role_sd, n_roles)
    j = np.arange(cfg.tokens)
    pos = cfg.pos0 * np.exp(-j / cfg.pos_decay)
    gap_shape = cfg.gap_inf + (cfg.gap0 - cfg.gap_inf) * np.exp(-j / cfg.gap_decay)
    layers_str = ",".join(map(str, cfg.layers))
    H, L = cfg.hidden, len(cfg.layers)
    centers = {g: rng.normal(0, 1, (L, H)) for g in (*GROUPS, CONTROL_GROUP)}
    assistant_dir = centers[CONTROL_GROUP] / np.linalg.norm(centers[CONTROL_GROUP], axis=1, keepdims=True)

    responses, labels, activations, wg_rows = [], [], [], []
    vec_store: dict[str, list[np.ndarray]] = {}
    vec_index = []
    folded = 0
    steer_conds = [(d, m) for d in cfg.derivations for m in cfg.magnitudes]
    tok_dir = out / "tokens"
    tok_dir.mkdir(exist_ok=True)
    for i, role in enumerate(progress(list(roles.itertuples(index=False)), "simulating roles", quiet=quiet)):
        g = role.group
        R = cfg.tasks * cfg.replicates
        task = np.repeat(np.arange(cfg.tasks), cfg.replicates)
        rep = np.tile(np.arange(cfg.replicates), cfg.tasks)
        rids = [response_id(role.role, f"t{t:02d}", k) for t, k in zip(task, rep)]
        w = rng.normal(0, cfg.response_sd, R)
        c_wo = (cfg.base - cfg.group_intercept[g] + u[i] + v[task] + w)[:, None] + pos[None, :]
        c_w = c_wo - cfg.gap_scale[g] * gap_shape[None, :]
        conds: list[tuple[str, str | None, float | None, np.ndarray]] = [
            ("with_prompt", None, None, c_w), ("without_prompt", None, None, c_wo)]
        if not role.is_control:
            conds += [("steered", d, m, c_wo - (cfg.slope(g, d) + b[i]) * m) for d, m in steer_conds]
        e_tok = rng.normal(0, cfg.token_sd, (R, cfg.tokens))
        C = len(conds)
        x = np.stack([c for *_, c in conds]) + e_tok[None] + rng.normal(0, cfg.cond_sd, (C, R, cfg.tokens))
        folded += int((x < 0).sum())
        n = C * R * cfg.tokens
        cond_names = ["with_prompt", "without_prompt", "steered"]
        derivs = [None, *cfg.derivations]
        table = pa.table({
            "response_id": _dict_array(rids, np.tile(np.repeat(np.arange(R), cfg.tokens), C)),
            "condition": _dict_array(cond_names, np.repeat([cond_names.index(c[0]) for c in conds], R * cfg.tokens)),
            "derivation": _dict_array(derivs, np.repeat([derivs.index(c[1]) for c in conds], R * cfg.tokens)),
            "magnitude": pa.array(np.repeat([np.nan if c[2] is None else c[2] for c in conds], R * cfg.tokens),
                                  pa.float64(), from_pandas=True),
            "layers": _dict_array([None, layers_str], np.repeat([c[1] is not None for c in conds], R * cfg.tokens)
                                  .astype(np.int32)),
            "token_index": pa.array(np.tile(j, C * R).astype(np.int32)),
            "token_id": pa.array(np.tile(rng.integers(0, 49152, (R, cfg.tokens)).ravel(), C).astype(np.int32)),
            "log_prob": pa.array((-np.abs(x)).astype(np.float32).ravel()),
        })
        assert table.num_rows == n
        write_table(table, "tokens", out, part=f"part-{i:05d}")

        p_den = 1 / (1 + np.exp(-(np.log(cfg.denial_rate[g] / (1 - cfg.denial_rate[g])) + den_u[i])))
        denies = rng.random(R) < p_den
        claims = rng.random(R) < cfg.claims_ai_rate[g]
        for r in range(R):
            kind = "ai" if claims[r] else "deny" if denies[r] else "char"
            responses.append({
                "response_id": rids[r], "role": role.role, "task_id": f"t{task[r]:02d}", "replicate": int(rep[r]),
                "seed": int(cfg.seed * 1_000_003 + i * 10_007 + r),
                "text": _TEXTS[kind].format(a=article(role.role), role=role.role),
                "n_tokens": cfg.tokens, "finish_reason": "length"})
            labels += [
                {"response_id": rids[r], "classifier": "denies_experience", "method": "simulated",
                 "label": int(denies[r] or claims[r]), "score": None},
                {"response_id": rids[r], "classifier": "claims_ai", "method": "simulated",
                 "label": int(claims[r]), "score": None}]
        for li, layer in enumerate(cfg.layers):
            base_w = centers[g][li] + rng.normal(0, 0.5, H)
            for r in range(R):
                pull = 1.5 * (denies[r] or claims[r])
                for cond, center in (("with_prompt", base_w + pull * assistant_dir[li]),
                                     ("without_prompt", centers[CONTROL_GROUP][li])):
                    for red in REDUCTIONS[:4]:
                        activations.append((rids[r], cond, layer, red,
                                             (center + rng.normal(0, 0.3, H)).astype(np.float32)))
            if not role.is_control:
                for d in cfg.derivations:
                    raw = base_w - centers[CONTROL_GROUP][li] + rng.normal(0, 0.2, H)
                    key = f"{d}/layer{layer}"
                    vec_store.setdefault(key, []).append(raw / np.linalg.norm(raw))
                    vec_index.append({"role": role.role, "derivation": d, "layer": layer, "tensor": key,
                                      "row": len(vec_store[key]) - 1, "raw_norm": float(np.linalg.norm(raw))})
        if not role.is_control:
            wg_base = rng.normal(6.0, 0.8)
            wg_rows.append({"role": role.role, "derivation": None, "magnitude": None, "target": role.role,
                            "log_prob": -abs(wg_base)})
            for d, m in steer_conds:
                wg_rows.append({"role": role.role, "derivation": d, "magnitude": m, "target": role.role,
                                "log_prob": -abs(wg_base - 0.5 * cfg.slope(g, d) * m + rng.normal(0, 0.1))})

    for li, layer in enumerate(cfg.layers):
        key = f"{AXIS}/layer{layer}"
        vec_store[key] = [assistant_dir[li]]
        vec_index.append({"role": CONTROL_GROUP, "derivation": AXIS, "layer": layer, "tensor": key,
                          "row": 0, "raw_norm": 1.0})
    _write_tables(out, roles, responses, labels, activations, wg_rows, vec_store, vec_index)
    truth = cfg.truth() | {"folded_share": folded / max(cfg.n_token_rows(), 1)}
    write_json({
        "kind": "simulated", "schema_version": SCHEMA_VERSION, "config": asdict(cfg), "truth": truth,
        "layers": list(cfg.layers),
        "seeds": {"simulation": cfg.seed}, "model": {"id": "simulated", "revision": None},
        "chat_template_hash": None, "provenance": provenance(), "shards_done": ["0/1"],
    }, out / MANIFEST)
    return out


def _write_tables(out, roles, responses, labels, activations, wg_rows, vec_store, vec_index) -> None:
    from safetensors.numpy import save_file

    from animacy.atomic import atomic_path

    write_table(roles, "roles", out)
    write_table(pd.DataFrame(responses), "responses", out)
    write_table(pd.DataFrame(labels).astype({"score": "float64"}), "labels", out)
    write_table(pd.DataFrame(wg_rows).astype({"magnitude": "float64", "derivation": "object"}), "word_guess", out)
    act = pa.table({
        "response_id": [a[0] for a in activations], "condition": [a[1] for a in activations],
        "layer": pa.array([a[2] for a in activations], pa.int64()), "reduction": [a[3] for a in activations],
        "values": pa.array([a[4] for a in activations], pa.list_(pa.float32())),
    })
    write_table(act, "activations", out, part="part-00000")
    (out / VECTORS_DIR).mkdir(exist_ok=True)
    with atomic_path(out / VECTORS_DIR / VECTORS_FILE) as tmp:
        save_file({k: np.stack(v).astype(np.float32) for k, v in vec_store.items()}, str(tmp))
    write_table(pd.DataFrame(vec_index), "vectors_index", out)


def example_means(seed: int = 0) -> pd.DataFrame:
    """Response means (first 50 tokens) of a small simulated study with one derivation: the table the
    steering models take, for examples and doctests."""
    import tempfile

    from animacy.analysis.aggregate import response_means

    cfg = SimConfig(roles_per_group=6, controls=2, tasks=2, replicates=2, tokens=20, magnitudes=(0.0, 2.0, 4.0),
                    derivations=(DERIVATIONS[0],), seed=seed)
    with tempfile.TemporaryDirectory(prefix="animacy-example-") as tmp:
        return response_means(Run(simulate(Path(tmp) / "run", cfg, quiet=True)))
