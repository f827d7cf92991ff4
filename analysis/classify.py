"""Label responses with one method (rules, judge, trained), measure methods against the hand labels, and
write a run's `labels` table."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import cohen_kappa_score, precision_recall_fscore_support

from animacy.analysis import trained
from animacy.analysis.judge import Judge
from animacy.analysis.rules import classify_rules
from animacy.errors import ConfigError, DataError
from animacy.labels import store_labels
from animacy.resources import HAND_LABELS, REAL_LABELS
from animacy.run import Run
from animacy.schema import LABELS

METHODS = ("rules", "judge", "trained")


def read_hand_labels(path: Path = HAND_LABELS) -> pd.DataFrame:
    return pd.read_csv(path)


REAL_RESPONSES = "seed_study/gemma3_27b_responses.csv.gz"


def read_real_labels(data: Path, path: Path = REAL_LABELS) -> pd.DataFrame:
    """The hand labels of real Gemma-3-27B responses (data/labels/GUIDE.md) joined to their texts, which are
    read from the seed study in `data` (../shared/data): `id, role, task, text, <labels>, split`."""
    source = Path(data) / REAL_RESPONSES
    if not source.is_file():
        raise DataError(source, "is missing: the real responses are read from the seed study (../shared/data)")
    labels = pd.read_csv(path, keep_default_na=False)
    texts = pd.read_csv(source, keep_default_na=False, usecols=["role", "task", "sample_idx", "text"])
    keys = ["role", "task", "sample_idx"]
    m = labels.merge(texts, on=keys, how="left", validate="one_to_one")
    if m["text"].isna().any():
        i = int(np.argmax(m["text"].isna().to_numpy()))
        raise DataError(source, "has no response for a labelled key", column="role", row=i,
                        value="|".join(str(m[k].iloc[i]) for k in keys))
    return m.assign(id=m["role"] + "|" + m["task"] + "|" + m["sample_idx"].astype(str))


def classify_texts(texts: pd.DataFrame, method: str, judge: Judge | None = None,
                   quiet: bool = False) -> pd.DataFrame:
    """`id, text[, role]` -> `id, denies_experience, claims_ai, method` (+ rule names or scores)."""
    if method == "rules":
        return classify_rules(texts)
    if method == "trained":
        return trained.predict(trained.fit(read_hand_labels()), texts)
    if method == "judge":
        if judge is None:
            raise ConfigError("--endpoint", "the judge method needs --endpoint URL and --model NAME")
        return judge.classify(texts, quiet=quiet)
    raise ConfigError("--method", f"unknown method {method!r}; choose {', '.join(METHODS)}")


def read_texts(path: Path) -> pd.DataFrame:
    """A texts table with `id, text` (and optionally `role`): CSV, CSV.gz or Parquet, checked like every
    other input."""
    from animacy.flatcsv import check_text_file
    from animacy.tables import kind, read_table

    if kind(path) == "csv":
        header = check_text_file(path)
        df = None
    else:
        df = read_table(path)
        header = list(df.columns)
    for col in ("id", "text"):
        if col not in header:
            raise DataError(path, f"needs columns id and text; '{col}' is missing", column=col)
    if df is None:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        df = df.astype({"id": str}).assign(text=df["text"].fillna("").astype(str))
    empty = df["text"].str.strip() == ""
    if empty.any():
        i = int(np.argmax(empty.to_numpy()))
        raise DataError(path, "has an empty text", column="text", row=i, csv_line=True)
    dup = df["id"].duplicated()
    if dup.any():
        i = int(np.argmax(dup.to_numpy()))
        raise DataError(path, "duplicate id", column="id", row=i, value=df["id"].iloc[i], csv_line=True)
    return df


def metrics(truth: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Precision, recall, F1 and the confusion counts per method and label, on the ids both share."""
    rows = []
    for method, pred in predictions.groupby("method", sort=False):
        m = truth.merge(pred, on="id", suffixes=("_true", ""))
        for lab in LABELS:
            y, p = m[f"{lab}_true"].astype(int), m[lab].astype(int)
            prec, rec, f1, _ = precision_recall_fscore_support(y, p, average="binary", zero_division=0)
            rows.append({"method": method, "label": lab, "n": len(m), "precision": prec, "recall": rec, "f1": f1,
                         "tp": int(((y == 1) & (p == 1)).sum()), "fp": int(((y == 0) & (p == 1)).sum()),
                         "fn": int(((y == 1) & (p == 0)).sum()), "tn": int(((y == 0) & (p == 0)).sum())})
    return pd.DataFrame(rows)


def agreement(predictions: pd.DataFrame) -> pd.DataFrame:
    """Cohen's kappa between every pair of methods, per label (on shared ids; 'hand' may be one)."""
    methods = list(predictions["method"].unique())
    rows = []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            m = predictions[predictions.method == a].merge(predictions[predictions.method == b], on="id")
            for lab in LABELS:
                rows.append({"method_a": a, "method_b": b, "label": lab, "n": len(m),
                             "kappa": cohen_kappa_score(m[f"{lab}_x"].astype(int), m[f"{lab}_y"].astype(int))})
    return pd.DataFrame(rows)


# The splits no version of the current rules was written against (data/labels/GUIDE.md: 'heldout' and
# 'heldout2' were each used once to test, then to revise, earlier versions).
UNSEEN = ("heldout3",)


def evaluate(splits: tuple[str, ...] = UNSEEN, judge: Judge | None = None,
             quiet: bool = False, data: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of each method on held-out hand labels, and kappa between methods and the hand labels. The
    trained model is fitted on the other splits; it is also cross-validated over every label. Without a
    judge the answer depends only on the packaged hand labels, so it is computed once per process.

    With `data` (the seed study's folder, ../shared/data), the methods are also measured on the held-out
    real Gemma-3-27B responses (column `labels`: `real heldout`; the trained model is then fitted on every
    written label and the real `dev` split)."""
    if judge is None:
        result, kappa = (t.copy() for t in _evaluate_offline(tuple(splits)))
    else:
        result, kappa = _evaluate(splits, judge, quiet)
    result, kappa = result.assign(labels="written"), kappa.assign(labels="written")
    if data is None:
        return result, kappa
    real = read_real_labels(data)
    test = real[real["split"] == "heldout"]
    train = pd.concat([read_hand_labels(), real[real["split"] == "dev"]], ignore_index=True)
    r, k = _measure(test, train, judge, quiet)
    return (pd.concat([result, r.assign(labels="real heldout")], ignore_index=True),
            pd.concat([kappa, k.assign(labels="real heldout")], ignore_index=True))


@functools.lru_cache(maxsize=4)
def _evaluate_offline(splits: tuple[str, ...]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _evaluate(splits, None, True)


def _evaluate(splits: tuple[str, ...], judge: Judge | None, quiet: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    hand = read_hand_labels()
    result, kappa = _measure(hand[hand["split"].isin(splits)], hand[~hand["split"].isin(splits)], judge, quiet)
    cv = trained.cross_validated(hand)
    return pd.concat([result, metrics(hand, cv[["id", *LABELS, "method"]])], ignore_index=True), kappa


def _measure(test: pd.DataFrame, train: pd.DataFrame, judge: Judge | None,
             quiet: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each method's metrics on `test`, the trained model fitted on `train`; kappa of every pair."""
    preds = [classify_rules(test), trained.predict(trained.fit(train), test).assign(method="trained (other splits)")]
    if judge is not None:
        preds.append(judge.classify(test, quiet=quiet))
    cols = ["id", *LABELS, "method"]
    table = pd.concat([p[cols] for p in preds], ignore_index=True)
    kappa = agreement(pd.concat([test[cols[:-1]].assign(method="hand"), table], ignore_index=True))
    return metrics(test, table), kappa


def judge_traits(run: Run, judge: Judge, quiet: bool = False) -> pd.DataFrame:
    """Score every trait-steered response of a run for its trait (0-100) with the judge, and write the
    scores into the run's trait_scores table, replacing that judge's earlier scores (atomic). The judge
    is told each trait's `description` from the run's config (default: its positive instruction)."""
    if not run.has("trait_responses"):
        raise DataError(run.path, "has no trait_responses table: collect with [[traits]] magnitudes first")
    traits = run.manifest.get("config", {}).get("traits", [])
    descriptions = {t["name"]: t.get("description") or t["positive"] for t in traits}
    responses = run.read("trait_responses", ["response_id", "trait", "question", "text"])
    unknown = sorted(set(responses["trait"]) - set(descriptions))
    if unknown:
        raise DataError(run.path / "manifest.json", f"does not describe the trait '{unknown[0]}' of trait_responses")
    return store_labels(run, judge.score_traits(responses, descriptions, quiet), "trait_scores")


def label_run(run: Run, method: str, judge: Judge | None = None, quiet: bool = False) -> pd.DataFrame:
    """Label every response of a run (and every turn of its conversations) and write them into its labels
    table, replacing that method's earlier rows and keeping the other methods' (atomic)."""
    parts = [run.read(t, ["response_id", "role", "text"]) for t in ("responses", "conversations") if run.has(t)]
    responses = pd.concat(parts, ignore_index=True).rename(columns={"response_id": "id"})
    responses = responses[responses["text"].notna()]
    pred = classify_texts(responses, method, judge, quiet)
    name = pred["method"].iloc[0] if len(pred) else method
    rows = [pd.DataFrame({"response_id": pred["id"], "classifier": lab, "method": name,
                          "label": pred[lab].astype("int64"),
                          "score": pred.get(f"{lab}_score", pd.Series(np.nan, index=pred.index)).astype(float)})
            for lab in LABELS]
    return store_labels(run, pd.concat(rows, ignore_index=True))
