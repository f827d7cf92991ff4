"""Altair charts of the analysis tables, for the report: each takes a tidy table and returns a chart
(presentation only; every number comes from the analysis functions)."""

from __future__ import annotations

import altair as alt
import pandas as pd

WIDTH = 260
# one colour per design group in every figure
_GROUP_COLOURS = {"High Mental, High Physical": "#1f77b4", "Low Mental, High Physical": "#ff7f0e",
                  "Low Mental, Low Physical": "#2ca02c", "High Mental, Low Physical": "#9467bd",
                  "Assistant": "#7f7f7f", "No prompt": "#bcbd22"}
GROUP = alt.Color("group:N", title="group", legend=alt.Legend(orient="bottom", columns=2),
                  scale=alt.Scale(domain=list(_GROUP_COLOURS), range=list(_GROUP_COLOURS.values())))


def drift_curves(curves: pd.DataFrame) -> alt.Chart:
    """Mean projection on a direction by turn, free and capped, with role-clustered bands; one panel per
    direction and layer."""
    base = alt.Chart().encode(x=alt.X("turn:O", title="turn"), color=alt.Color("arm:N", title=None,
                                                                                  legend=alt.Legend(orient="bottom")))
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("ci_low:Q", title="mean projection"), y2="ci_high:Q")
    line = base.mark_line(point=True).encode(y=alt.Y("projection:Q", title="mean projection",
                                                     scale=alt.Scale(zero=False)))
    data = curves.assign(panel=curves["direction"] + " · layer " + curves["layer"].astype(str))
    return alt.layer(band, line, data=data).properties(width=WIDTH, height=160).facet(
        facet=alt.Facet("panel:N", title=None), columns=2)


def turn_behaviour(behaviour: pd.DataFrame) -> alt.Chart:
    """Each measure of the answers by turn, free and capped (mean over roles, role-clustered bars)."""
    base = alt.Chart().encode(x=alt.X("turn:O", title="turn"), color=alt.Color("arm:N", title=None,
                                                                                  legend=alt.Legend(orient="bottom")))
    line = base.mark_line(point=True).encode(y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)))
    err = base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title=None), y2="ci_high:Q")
    return alt.layer(line, err, data=behaviour).properties(width=180, height=140).facet(
        facet=alt.Facet("measure:N", title=None), columns=3).resolve_scale(y="independent")


def trait_curves(curves: pd.DataFrame) -> alt.Chart:
    """Trait expression against steering magnitude, one panel per trait and measure (a judge's 0-100 score,
    the offline proxy at a layer), with intervals over questions."""
    data = curves.assign(panel=curves["trait"] + " · " + curves["measure"])
    base = alt.Chart().encode(x=alt.X("magnitude:Q", title="steering magnitude"))
    line = base.mark_line(point=True).encode(y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)))
    err = base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title=None), y2="ci_high:Q")
    return alt.layer(line, err, data=data).properties(width=180, height=140).facet(
        facet=alt.Facet("panel:N", title=None), columns=3).resolve_scale(y="independent")


def roles_per_group(roles: pd.DataFrame) -> alt.Chart:
    counts = roles.groupby("group").size().rename("roles").reset_index()
    return alt.Chart(counts).mark_bar().encode(
        x=alt.X("roles:Q", title="roles"), y=alt.Y("group:N", title=None, sort="-x"), color=GROUP
    ).properties(width=WIDTH, height=120)


def label_rates(by_group: pd.DataFrame) -> alt.Chart:
    base = alt.Chart().encode(y=alt.Y("group:N", title=None), color=GROUP)
    bars = base.mark_bar().encode(x=alt.X("rate:Q", title="share of responses", scale=alt.Scale(domain=[0, 1])))
    err = base.mark_errorbar(color="black").encode(x=alt.X("ci_low:Q", title="share of responses"), x2="ci_high:Q")
    return alt.layer(bars, err, data=by_group).properties(width=WIDTH, height=110).facet(
        column=alt.Column("classifier:N", title=None))


def gap_curve(gap: pd.DataFrame) -> alt.Chart:
    base = alt.Chart(gap).encode(x=alt.X("token_index:Q", title="response token position"), color=GROUP)
    title = "log-prob with − without prompt"
    band = base.mark_area(opacity=0.2).encode(y=alt.Y("ci_low:Q", title=title), y2="ci_high:Q")
    line = base.mark_line().encode(y=alt.Y("gap:Q", title=title))
    zero = base.mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(0), color=alt.value("gray"))
    return (band + line + zero).properties(width=2 * WIDTH, height=220)


def steering_effect(effect: pd.DataFrame, title: str) -> alt.Chart:
    """Mean log-prob of the first N steered tokens against magnitude, by group, one panel per derivation
    (one window of the analysis' `steering_effect.csv`)."""
    return alt.Chart(effect).mark_line(point=True).encode(
        x=alt.X("magnitude:Q"), y=alt.Y("mean_log_prob:Q", title="mean log-prob", scale=alt.Scale(zero=False)),
        color=GROUP,
    ).properties(width=180, height=140).facet(facet=alt.Facet("derivation:N", title=None), columns=3).properties(
        title=title)


def pooled_recovery(rec: pd.DataFrame) -> alt.Chart:
    base = alt.Chart().encode(x=alt.X("magnitude:Q"), color=GROUP)
    line = base.mark_line(point=True).encode(y=alt.Y("pooled_recovery:Q", title="pooled recovery"))
    err = base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title="pooled recovery"), y2="ci_high:Q")
    one = alt.Chart().mark_rule(strokeDash=[4, 4], color="gray").encode(y=alt.datum(1.0))
    return alt.layer(line, err, one, data=rec.dropna(subset=["pooled_recovery"])).properties(
        width=180, height=140).facet(facet=alt.Facet("derivation:N", title=None), columns=3)


def slope_differences(sd: pd.DataFrame) -> alt.Chart:
    base = alt.Chart().encode(y=alt.Y("group:N", title=None), color=alt.Color("method:N", legend=alt.Legend(
        orient="bottom")), yOffset="method:N")
    title = "% difference in steering slope"
    pts = base.mark_point(filled=True).encode(x=alt.X("pct_difference:Q", title=title))
    err = base.mark_errorbar().encode(x=alt.X("ci_low:Q", title=title), x2="ci_high:Q")
    zero = alt.Chart().mark_rule(strokeDash=[4, 4]).encode(x=alt.datum(0))
    return alt.layer(err, pts, zero, data=sd).properties(width=220, height=90).facet(
        facet=alt.Facet("derivation:N", title=None), columns=2)


def steerability_vs_rating(slopes: pd.DataFrame, roles: pd.DataFrame, rating: str) -> alt.Chart:
    df = slopes.merge(roles[["role", rating]], on="role").dropna(subset=[rating])
    base = alt.Chart().encode(x=alt.X(f"{rating}:Q", scale=alt.Scale(zero=False)),
                              y=alt.Y("slope:Q", title="steering slope (per-role OLS)"))
    return alt.layer(base.mark_point().encode(color=GROUP, tooltip=["role", "slope"]),
                     base.transform_regression(rating, "slope").mark_line(color="black"), data=df).properties(
        width=180, height=140).facet(facet=alt.Facet("derivation:N", title=None), columns=3)


def embeddings(emb: pd.DataFrame, derivation: str, layer: int) -> alt.Chart:
    df = emb[(emb["derivation"] == derivation) & (emb["layer"] == layer)]
    return alt.Chart(df).mark_point(filled=True, size=60).encode(
        x=alt.X("x:Q", title=None), y=alt.Y("y:Q", title=None), color=GROUP, tooltip=["role"],
    ).properties(width=WIDTH, height=WIDTH).facet(column=alt.Column("method:N", title=None))


def word_guess(wg: pd.DataFrame) -> alt.Chart:
    """Rise in the role word's log-prob against magnitude (pooled over prompts), by group and derivation."""
    if "prompt" in wg:
        wg = wg[wg["prompt"] == "all"]
    base = alt.Chart().encode(x="magnitude:Q", color=GROUP)
    line = base.mark_line(point=True).encode(y=alt.Y("mean_rise:Q", title="rise in log p(role word)"))
    err = base.mark_errorbar().encode(y=alt.Y("ci_low:Q", title="rise in log p(role word)"), y2="ci_high:Q")
    return alt.layer(line, err, data=wg).properties(width=180, height=140).facet(
        facet=alt.Facet("derivation:N", title=None), columns=3)


def direction_validation(dv: pd.DataFrame) -> alt.Chart:
    long = dv.melt(id_vars=["layer", "reduction"], value_vars=["cohens_d", "heldout_accuracy"])
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("layer:O"), y=alt.Y("value:Q", title=None), color=alt.Color("reduction:N"), xOffset="reduction:N",
    ).properties(width=WIDTH, height=140).facet(column=alt.Column("variable:N", title=None)).resolve_scale(
        y="independent")
