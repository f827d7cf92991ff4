"""Roles from the norms: readers for both formats, threshold groups, seeded sampling, controls."""

from __future__ import annotations

import pandas as pd
import pytest

from animacy.errors import DataError
from animacy.roles import GroupRule, design_roles, read_norms


def test_workbook_reader_and_known_ratings(shared_data):
    norms = read_norms(shared_data / "VanArsdall_Blunt_NormData.xlsx")
    by = norms.set_index("role")
    assert by.loc["lawyer", "anim_mental"] == pytest.approx(609.0, abs=0.1)
    assert by.loc["sock", "anim_physical"] == pytest.approx(134.3, abs=0.1)
    groups = GroupRule().assign(norms.set_index("role"))
    assert groups["lawyer"] == "High Mental, High Physical"
    assert groups["oak"] == "Low Mental, High Physical"
    assert groups["sock"] == "Low Mental, Low Physical"
    assert {"goals", "person", "living"} <= set(norms.columns)


def test_thresholds_reproduce_the_original_selection(shared_data):
    """Every role the original study selected falls in its group under the >= 300 / < 250 rule."""
    selected = read_norms(shared_data / "seed_selected_roles.csv")
    rated = selected[~selected["is_control"]]
    assert (GroupRule().assign(rated) == rated["group"]).all()
    assert selected["is_control"].sum() == 5


def test_in_between_ratings_are_unassigned():
    df = pd.DataFrame({"role": ["a", "b", "c"], "anim_mental": [299.0, 100.0, 250.0],
                       "anim_physical": [400.0, 100.0, 100.0]})
    g = GroupRule().assign(df)
    assert pd.isna(g[0]) and g[1] == "Low Mental, Low Physical" and pd.isna(g[2])


def test_seeded_sampling_is_reproducible_and_balanced(shared_data):
    norms = read_norms(shared_data / "VanArsdall_Blunt_NormData.xlsx")
    a = design_roles(norms, 40, seed=7, controls=["AI assistant", "assistant"])
    b = design_roles(norms, 40, seed=7, controls=["AI assistant", "assistant"])
    c = design_roles(norms, 40, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert set(a.role) != set(c.role)
    counts = a.groupby("group").size()
    assert counts.drop("Assistant").eq(40).all() and counts["Assistant"] == 2
    assert a.loc[a.is_control, "anim_mental"].isna().all()


def test_asking_for_a_group_too_small_is_a_clear_error():
    df = pd.DataFrame({"role": list("abc"), "anim_mental": [400.0, 410, 100], "anim_physical": [400.0, 420, 100]})
    with pytest.raises(DataError, match="has 1 roles, fewer than the 2"):
        design_roles(df, 2, seed=0, groups=["Low Mental, Low Physical"])
