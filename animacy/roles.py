"""Roles from norm ratings: readers for the norms people use, groups by thresholds, seeded sampling,
assistant controls.

Canonical rating names (both readers map to them): living, thought, repro, person, goals, move,
anim_mental, anim_physical, plus word properties in snake case (concreteness, familiarity, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from animacy.errors import DataError
from animacy.schema import CONTROL_GROUP


def article(role: str) -> str:
    """'a' or 'an' before a role name, as the system prompt and the simulated texts write it."""
    return "an" if role[:1].lower() in "aeiou" else "a"

# VanArsdall & Blunt (2022) workbook, sheet "Words"
_WORKBOOK_NAMES = {
    "Word": "role", "Category": "category", "Living": "living", "Thought": "thought", "Repro": "repro",
    "Person": "person", "Goals": "goals", "Move": "move", "AnimMental": "anim_mental",
    "AnimPhysical": "anim_physical", "CNC": "concreteness", "FAM": "familiarity", "IMG": "imageability",
    "AVAIL": "availability", "MNG": "meaningfulness", "VAL": "valence", "ARO": "arousal", "DOM": "dominance",
    "AoA": "age_of_acquisition", "LEN": "word_length", "NSyll": "n_syllables", "SUBTLWF": "word_frequency",
}
# The original study's selected-roles CSV
_SELECTED_NAMES = {
    "word": "role", "Living": "living", "thought_mean": "thought", "repro_mean": "repro",
    "person_mean": "person", "goals_mean": "goals", "move_mean": "move", "IMG": "imageability",
}
AXIS_LABELS = {"anim_mental": "Mental", "anim_physical": "Physical"}


def read_norms(path: str | Path) -> pd.DataFrame:
    """Read the VanArsdall & Blunt workbook (.xlsx, sheet `Words`; rows marked `remove` dropped) or a
    CSV of roles with ratings (e.g. the original study's selection). Returns one row per role with
    canonical rating names; a `group` column is kept if the file has one."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist", hint="Give the path to the norms workbook or roles CSV.")
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            df = pd.read_excel(path, sheet_name="Words")
        except ValueError as exc:
            raise DataError(path, f"has no sheet 'Words' ({exc})") from exc
        df = df.rename(columns=_WORKBOOK_NAMES)
        if "remove" in df:
            df = df[df["remove"].isna()].drop(columns="remove")
    else:
        from animacy.flatcsv import read_roles_csv

        df = read_roles_csv(path, rename=_SELECTED_NAMES)
        df = df.drop(columns=[c for c in ("remove", "group_id") if c in df])
        if "group" in df:
            df["is_control"] = df["group"] == CONTROL_GROUP
    for col in ("role", "anim_mental", "anim_physical"):
        if col not in df:
            raise DataError(path, f"has no '{col}' column (after mapping the workbook's names)", column=col)
    rater_counts = {f"{n}N" for n in ("Living", "Thought", "Repro", "Person", "Goals", "Move")}
    df = df[[c for c in df.columns if c not in rater_counts and not c.endswith("_score")]]  # rater counts
    df["role"] = df["role"].astype(str).str.strip()
    return df.reset_index(drop=True)


@dataclass(frozen=True)
class GroupRule:
    """Groups by thresholds on two rating columns: high >= `high`, low < `low`; in between is unassigned."""

    x: str = "anim_mental"
    y: str = "anim_physical"
    high: float = 300.0
    low: float = 250.0

    def label(self, x_high: bool, y_high: bool) -> str:
        xl, yl = AXIS_LABELS.get(self.x, self.x), AXIS_LABELS.get(self.y, self.y)
        return f"{'High' if x_high else 'Low'} {xl}, {'High' if y_high else 'Low'} {yl}"

    def assign(self, norms: pd.DataFrame) -> pd.Series:
        """The group of each row, or NA where either rating falls between the thresholds."""
        for c in (self.x, self.y):
            if c not in norms:
                raise DataError("norms", f"has no rating column '{c}' to group by", column=c)
        xs, ys = norms[self.x].astype(float), norms[self.y].astype(float)
        out = pd.Series(pd.NA, index=norms.index, dtype="object")
        for xh in (True, False):
            for yh in (True, False):
                mx = xs >= self.high if xh else xs < self.low
                my = ys >= self.high if yh else ys < self.low
                out[mx & my] = self.label(xh, yh)
        return out


def design_roles(
    norms: pd.DataFrame,
    per_group: int,
    seed: int,
    rule: GroupRule | None = None,
    groups: list[str] | None = None,
    controls: list[str] | None = None,
) -> pd.DataFrame:
    """Assign groups, sample `per_group` roles per group with a seed, and append assistant controls
    (group 'Assistant', no ratings). `groups` names the groups to use (each must have enough roles);
    by default every group that has enough is used. Returns a roles table."""
    rule = rule or GroupRule()
    df = norms.copy()
    if "is_control" in df:
        df = df[~df["is_control"].fillna(False).astype(bool)]
    df["group"] = rule.assign(df)
    df = df[df["group"].notna()]
    available = df["group"].value_counts()
    wanted = groups or sorted(g for g, n in available.items() if n >= per_group)
    if not wanted:
        raise DataError("norms", f"no group has {per_group} roles", column="group",
                        hint="Lower the number per group or widen the thresholds.")
    rng = np.random.default_rng(seed)
    parts = []
    for g in wanted:
        pool = df[df["group"] == g].sort_values("role")
        if len(pool) < per_group:
            raise DataError("norms", f"group '{g}' has {len(pool)} roles, fewer than the {per_group} asked for",
                            column="group", hint="Lower the number per group or widen the thresholds.")
        parts.append(pool.iloc[np.sort(rng.choice(len(pool), per_group, replace=False))])
    out = pd.concat(parts, ignore_index=True)
    out["is_control"] = False
    if controls:
        out = pd.concat([out, pd.DataFrame({"role": controls, "group": CONTROL_GROUP, "is_control": True})],
                        ignore_index=True)
    front = ["role", "group", "is_control"]
    return out[front + [c for c in out.columns if c not in front]]


DEFAULT_CONTROLS = ["AI assistant", "helpful assistant", "assistant"]
