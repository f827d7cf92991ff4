"""The roles table of a study (no torch: the plan and the runner both need it)."""

from __future__ import annotations

import pandas as pd

from animacy.collect.config import StudyConfig
from animacy.errors import ConfigError
from animacy.roles import GroupRule, design_roles, read_norms
from animacy.schema import CONTROL_GROUP, NO_PROMPT_GROUP, NO_PROMPT_ROLE


def study_roles(cfg: StudyConfig) -> pd.DataFrame:
    """The roles table of the study: sampled from a norms/roles file or listed, plus controls and the
    no-system-prompt pass."""
    if cfg.roles_list is not None:
        roles = pd.DataFrame(cfg.roles_list)
        if not {"role", "group"} <= set(roles.columns):
            raise ConfigError(cfg.path, "each entry of roles.list needs role and group", column="roles.list")
        roles["is_control"] = False
    else:
        norms = read_norms(cfg.resolve(cfg.roles_table))
        if cfg.per_group is None and "group" in norms:
            roles = norms[~norms.get("is_control", pd.Series(False, index=norms.index)).fillna(False).astype(bool)]
            roles = roles.assign(is_control=False)
        else:
            roles = design_roles(norms, cfg.per_group or 1, cfg.seed, GroupRule(**cfg.group_rule))
            roles = roles[~roles["is_control"]]
    extra = pd.DataFrame({"role": [*cfg.controls, NO_PROMPT_ROLE],
                          "group": [CONTROL_GROUP] * len(cfg.controls) + [NO_PROMPT_GROUP], "is_control": True})
    clash = sorted(set(roles["role"].astype(str)) & set(extra["role"]))
    if clash:
        raise ConfigError(cfg.path, f"the role '{clash[0]}' of the roles table is also an assistant control (or the "
                          "no-prompt pass)", column="roles.controls")
    dup = roles["role"].astype(str).duplicated()
    if dup.any():
        twice = roles["role"].iloc[int(dup.to_numpy().argmax())]
        raise ConfigError(cfg.path, f"the roles table has the role '{twice}' twice", column="roles.table")
    out = pd.concat([roles, extra], ignore_index=True)
    front = ["role", "group", "is_control"]
    out = out[front + [c for c in out.columns if c not in front]]
    return out.drop(columns=[c for c in ("category", "broad_category") if c in out and out[c].isna().all()])


def role_groups(roles: list[int], per_role: int, batch: int, waste: float = 0.1) -> list[list[int]]:
    """Consecutive roles grouped into jobs whose `per_role` sequences each are generated `batch` at a time:
    the fewest roles per job (at least batch // per_role) whose batches are at most `waste` padding, so
    the last batch of a job is rarely a small one (a role's 50 responses at batch 32: three roles, 150 in
    five batches, not two batches of 32 and 18 for each).

    >>> role_groups(list(range(7)), per_role=50, batch=32)
    [[0, 1, 2], [3, 4, 5], [6]]
    >>> role_groups(list(range(5)), per_role=2, batch=8)
    [[0, 1, 2, 3], [4]]
    """
    per_role, batch = max(1, per_role), max(1, batch)
    k = max(1, batch // per_role)
    while -(k * per_role) % batch > waste * (k * per_role + -(k * per_role) % batch):
        k += 1
    return [roles[i:i + k] for i in range(0, len(roles), k)]
