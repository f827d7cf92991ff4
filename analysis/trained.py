"""A trained classifier for the two labels: logistic regression on word (1-2) and character (2-5)
n-grams, fitted on the hand labels. Used as a third, data-driven opinion beside the rules and the
judge; its cross-validated metrics say how far to trust it."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_union

from animacy.schema import LABELS


def make_model(seed: int = 0) -> Pipeline:
    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )
    clf = LogisticRegression(C=10.0, class_weight="balanced", max_iter=2000, random_state=seed)
    return Pipeline([("features", features), ("clf", clf)])


def fit(labelled: pd.DataFrame, seed: int = 0) -> dict[str, Pipeline]:
    """One fitted model per label, on `text` and the 0/1 label columns."""
    return {lab: make_model(seed).fit(labelled["text"], labelled[lab].astype(int)) for lab in LABELS}


def predict(models: dict[str, Pipeline], texts: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"id": texts["id"].to_numpy()})
    for lab, model in models.items():
        out[lab] = model.predict(texts["text"]).astype(int)
        out[f"{lab}_score"] = model.predict_proba(texts["text"])[:, 1]
    return out.assign(method="trained")


def cross_validated(labelled: pd.DataFrame, folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Out-of-fold predictions for every labelled text (stratified folds), as a predictions table."""
    out = pd.DataFrame({"id": labelled["id"].to_numpy()})
    for lab in LABELS:
        y = labelled[lab].astype(int).to_numpy()
        cv = StratifiedKFold(n_splits=min(folds, int(np.bincount(y).min())), shuffle=True, random_state=seed)
        out[lab] = cross_val_predict(make_model(seed), labelled["text"], y, cv=cv)
    return out.assign(method="trained (cross-validated)")
