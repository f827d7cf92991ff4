"""Geometry of role vectors and activations: PCA, UMAP, cosine similarity, projection on the assistant
axis, and validation of a direction (Cohen's d, held-out accuracy) per layer.

Vectors come from the run's safetensors (read with numpy); activations from the `activations` table,
filtered in DuckDB to one layer and reduction at a time so that only what is used is loaded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from animacy.run import Run, connect
from animacy.schema import AXIS

NOT_ROLES = (AXIS, "trait")  # index rows that are not one vector per role


def role_matrices(index: pd.DataFrame, tensors: dict[str, np.ndarray]) -> dict[tuple[str, int], pd.DataFrame]:
    """(derivation, layer) -> DataFrame of unit vectors indexed by role (assistant axis and trait vectors
    excluded)."""
    out = {}
    roles_only = index[~index["derivation"].isin(NOT_ROLES)]
    for (d, layer), part in roles_only.groupby(["derivation", "layer"], sort=True):
        mat = np.stack([tensors[t][r] for t, r in zip(part["tensor"], part["row"])])
        out[(d, int(layer))] = pd.DataFrame(mat, index=part["role"].to_numpy())
    return out


def pca_variance(mats: dict[tuple[str, int], pd.DataFrame], threshold: float = 0.70) -> pd.DataFrame:
    """Variance explained by each principal component of the role vectors, and how many reach `threshold`."""
    rows = []
    for (d, layer), m in mats.items():
        x = m.to_numpy(float) - m.to_numpy(float).mean(axis=0)
        s = np.linalg.svd(x, compute_uv=False)
        ratio = s**2 / (s**2).sum()
        cum = np.cumsum(ratio)
        needed = int(np.searchsorted(cum, threshold) + 1)
        rows += [{"derivation": d, "layer": layer, "component": k + 1, "variance_ratio": r, "cumulative": c,
                  f"dims_to_{int(threshold * 100)}": needed} for k, (r, c) in enumerate(zip(ratio, cum))]
    return pd.DataFrame(rows)


def dims_to_threshold(variance: pd.DataFrame) -> pd.DataFrame:
    """One row per derivation x layer: how many components reach the threshold of `pca_variance`."""
    col = next(c for c in variance.columns if c.startswith("dims_to_"))
    return variance.drop_duplicates(["derivation", "layer"])[["derivation", "layer", col]].reset_index(drop=True)


def _umap(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Seeded UMAP on cosine distance, given the exact k nearest neighbours (numpy): UMAP's own search
    finds the same ones for so few points, but compiles for seconds first."""
    import warnings

    import umap as umap_lib

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dist = np.clip(1.0 - unit @ unit.T, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*knn_search_index.*")  # no transform of new data needed
        reducer = umap_lib.UMAP(n_neighbors=k, metric="cosine", random_state=seed, n_jobs=1,
                                precomputed_knn=(idx, np.take_along_axis(dist, idx, 1), None))
        return reducer.fit_transform(x)


def embeddings(mats: dict[tuple[str, int], pd.DataFrame], groups: pd.Series, seed: int = 0,
               umap: bool = True) -> pd.DataFrame:
    """2-D coordinates of every role: the first two principal components, and UMAP (seeded, cosine)."""
    rows = []
    for (d, layer), m in mats.items():
        if len(m) < 3:
            continue
        x = m.to_numpy(float)
        xc = x - x.mean(axis=0)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        pcs = u[:, :2] * s[:2]
        coords = {"pca": pcs}
        if umap and len(m) >= 5:
            coords["umap"] = _umap(x, min(15, len(m) - 1), seed)
        for method, c in coords.items():
            rows.append(pd.DataFrame({"derivation": d, "layer": layer, "method": method, "role": m.index,
                                      "group": groups.reindex(m.index).to_numpy(), "x": c[:, 0], "y": c[:, 1]}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def cosine_similarities(mats: dict[tuple[str, int], pd.DataFrame], groups: pd.Series) -> pd.DataFrame:
    """Tidy cosine similarity of every pair of roles (a < b) per derivation and layer, with both groups."""
    rows = []
    for (d, layer), m in mats.items():
        x = m.to_numpy(float)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        sim = x @ x.T
        i, j = np.triu_indices(len(m), k=1)
        rows.append(pd.DataFrame({"derivation": d, "layer": layer, "role_a": m.index[i], "role_b": m.index[j],
                                  "group_a": groups.reindex(m.index[i]).to_numpy(),
                                  "group_b": groups.reindex(m.index[j]).to_numpy(), "cosine": sim[i, j]}))
    return pd.concat(rows, ignore_index=True)


def cosine_by_group(pairs: pd.DataFrame) -> pd.DataFrame:
    """Mean cosine within and between groups (unordered group pairs)."""
    a, b = pairs["group_a"].astype(str), pairs["group_b"].astype(str)
    df = pairs.assign(g1=np.where(a <= b, a, b), g2=np.where(a <= b, b, a))
    return (df.groupby(["derivation", "layer", "g1", "g2"], sort=True)["cosine"].agg(["mean", "std", "size"])
            .reset_index().rename(columns={"g1": "group_a", "g2": "group_b", "mean": "mean_cosine",
                                           "std": "sd", "size": "n_pairs"}))


def axis_projections(index: pd.DataFrame, tensors: dict[str, np.ndarray],
                     mats: dict[tuple[str, int], pd.DataFrame], groups: pd.Series) -> pd.DataFrame:
    """Projection (cosine) of every role vector on the assistant axis of its layer."""
    axes = {int(r.layer): tensors[r.tensor][r.row] for r in index[index["derivation"] == AXIS].itertuples()}
    rows = []
    for (d, layer), m in mats.items():
        if layer not in axes:
            continue
        a = axes[layer] / np.linalg.norm(axes[layer])
        x = m.to_numpy(float)
        proj = x @ a / np.linalg.norm(x, axis=1)
        rows.append(pd.DataFrame({"derivation": d, "layer": layer, "role": m.index,
                                  "group": groups.reindex(m.index).to_numpy(), "projection": proj}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def load_activations(run: Run, condition: str = "with_prompt") -> pd.DataFrame:
    """The activations of one condition with role, group and task attached (values as float32 arrays)."""
    con = connect()
    df = con.execute(
        f"""SELECT a.response_id, a.layer, a.reduction, a."values", r.role, r.task_id, g."group", g.is_control
            FROM {run.relation_sql('activations')} a JOIN {run.relation_sql('responses')} r USING (response_id)
            JOIN {run.relation_sql('roles')} g ON g.role = r.role WHERE a.condition = $condition""",
        run.params("activations", "responses", "roles") | {"condition": condition}).df()
    return df


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Standardized mean difference with the pooled standard deviation."""
    na, nb = len(a), len(b)
    pooled = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    return float((a.mean() - b.mean()) / pooled)


def direction_validation(acts: pd.DataFrame, positive: pd.Series, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Per layer x reduction: a difference-of-means direction (positive - negative class) and how well it
    separates the classes: Cohen's d of the projections (in sample) and held-out accuracy, with folds
    grouped by role so that no role is in both the fit and the test (threshold: midpoint of the
    training class means)."""
    from sklearn.model_selection import GroupKFold

    rows = []
    for (layer, red), part in acts.groupby(["layer", "reduction"], sort=True):
        x = np.stack(part["values"].to_numpy()).astype(float)
        y = part["role"].map(positive).to_numpy(bool)
        if y.all() or not y.any():
            continue
        direction = x[y].mean(0) - x[~y].mean(0)
        proj = x @ direction / np.linalg.norm(direction)
        correct, n = 0, 0
        folds = min(n_folds, part.loc[y, "role"].nunique(), part.loc[~y, "role"].nunique())
        if folds >= 2:
            for train, test in GroupKFold(n_splits=folds).split(x, y, part["role"]):
                if y[train].all() or not y[train].any():
                    continue
                w = x[train][y[train]].mean(0) - x[train][~y[train]].mean(0)
                p_train, p_test = x[train] @ w, x[test] @ w
                cut = (p_train[y[train]].mean() + p_train[~y[train]].mean()) / 2
                correct += int(((p_test > cut) == y[test]).sum())
                n += len(test)
        rows.append({"layer": int(layer), "reduction": red, "cohens_d": cohens_d(proj[y], proj[~y]),
                     "heldout_accuracy": correct / n if n else np.nan, "n_positive": int(y.sum()),
                     "n_negative": int((~y).sum()), "folds": folds})
    return pd.DataFrame(rows)


def _col(table: pd.DataFrame, name: str) -> str:
    """pingouin >= 0.6 names columns with '_' ('p_val'), older releases with '-' ('p-val')."""
    return name if name in table else name.replace("_", "-")


def denial_similarity(acts: pd.DataFrame, denied: pd.Series, reduction: str = "mean_response") -> pd.DataFrame:
    """Cosine similarity of each role response's activation to the mean assistant-control activation,
    compared between denial and non-denial trials of the same role and task (paired t-test over the
    role x task cells that have both kinds, per layer)."""
    import pingouin as pg

    rows = []
    for layer, part in acts[acts["reduction"] == reduction].groupby("layer", sort=True):
        x = np.stack(part["values"].to_numpy()).astype(float)
        ctrl = part["is_control"].to_numpy(bool)
        if not ctrl.any():
            continue
        ref = x[ctrl].mean(0)
        sim = x @ ref / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref))
        df = part.assign(similarity=sim, denied=part["response_id"].map(denied))[~ctrl].dropna(subset=["denied"])
        cells = df.groupby(["role", "task_id", "denied"])["similarity"].mean().unstack("denied")
        if True not in cells or False not in cells:
            continue
        both = cells.dropna()
        if len(both) < 3:
            continue
        t = pg.ttest(both[True], both[False], paired=True)
        rows.append({"layer": int(layer), "reduction": reduction, "n_cells": len(both),
                     "mean_denial": both[True].mean(), "mean_no_denial": both[False].mean(),
                     "difference": (both[True] - both[False]).mean(), "t": float(t["T"].iloc[0]),
                     "dof": float(t["dof"].iloc[0]), "p_value": float(t[_col(t, "p_val")].iloc[0]),
                     "cohens_d": float(t[_col(t, "cohen_d")].iloc[0])})
    return pd.DataFrame(rows)
