"""Draw the responses of `gemma_labels.csv` from ../shared/data/seed_study/gemma3_27b_responses.csv.gz.

The texts are not ours to redistribute: the labels file stores each response's key (role, task,
sample_idx) and the labels written by hand; `animacy.analysis.classify` reads the texts from ../shared.

Strata: 120 responses of the five assistant-like roles (AI, AI assistant, assistant, helpful assistant,
llm), where AI self-identification is common, and 200 of the other roles and the no-prompt condition,
drawn uniformly. Within each stratum the order is shuffled and alternate responses go to `dev` and
`heldout`, so the two splits hold the same mix. Run: `.venv/bin/python data/labels/draw_gemma_sample.py`.
"""

import sys

import numpy as np
import pandas as pd

ASSISTANT_ROLES = ["AI", "AI assistant", "assistant", "helpful assistant", "llm"]
SEED = 20261128


def draw(responses: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(SEED)
    parts = []
    for is_assistant, n in ((True, 120), (False, 200)):
        stratum = responses[responses["role"].isin(ASSISTANT_ROLES) == is_assistant]
        picked = stratum.iloc[rng.permutation(len(stratum))[:n]]
        parts.append(picked.assign(split=["dev", "heldout"] * (n // 2)))
    keys = ["role", "task", "sample_idx", "split"]
    return pd.concat(parts)[keys].reset_index(drop=True)


if __name__ == "__main__":
    src = "../shared/data/seed_study/gemma3_27b_responses.csv.gz"
    draw(pd.read_csv(src, keep_default_na=False)).to_csv(sys.stdout, index=False)
