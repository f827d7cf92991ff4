"""One rule for every model that compares groups: which rows take part and which group is the reference.

- Controls (roles whose `is_control` is true, or whose group is the contract's control group) are left
  out of every group comparison: they carry no ratings and are not part of the design's groups.
- The reference group is the one the user names (`--reference-group`), else the first of the remaining
  groups in sort order.

`summary.json` states the rule and its outcome, and every model uses `apply_rule`.
"""

from __future__ import annotations

import pandas as pd

from animacy.errors import ConfigError
from animacy.schema import CONTROL_GROUP

RULE = ("controls (is_control, or group 'Assistant') are left out of every group comparison; the reference group "
        "is --reference-group when given, else the first remaining group in sort order")


def is_control(df: pd.DataFrame) -> pd.Series:
    flag = df["is_control"].fillna(False).astype(bool) if "is_control" in df else False
    return (df["group"] == CONTROL_GROUP) | flag


def apply_rule(df: pd.DataFrame, reference_group: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """The non-control rows, `group` categorical with the reference level first; (rows, reference).
    The reference is None when no non-control group is left."""
    rows = df[~is_control(df)].copy()
    groups = sorted(rows["group"].dropna().astype(str).unique())
    if not groups:
        return rows, None
    if reference_group is not None and reference_group not in groups:
        raise ConfigError("--reference-group", f"'{reference_group}' is not a non-control group of this table "
                          f"(groups: {', '.join(groups)})")
    ref = reference_group or groups[0]
    rows["group"] = pd.Categorical(rows["group"].astype(str), [ref, *[g for g in groups if g != ref]])
    return rows, ref
