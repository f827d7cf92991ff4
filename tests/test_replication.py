"""The worked replication (report/replication.qmd) on the original study's real Qwen3-30B sweeps from
../shared: it renders, and its study-formula fits agree with lme4 fitted here, directly in R."""

from __future__ import annotations

import pandas as pd
import pytest

from animacy.analysis.mixed_r import r_available
from animacy.cli import main
from tests.conftest import SHARED_DATA

pytestmark = [pytest.mark.slow, pytest.mark.r]


@pytest.fixture(scope="module")
def replication(tmp_path_factory):
    if not (SHARED_DATA / "seed_study").is_dir():
        pytest.skip(f"{SHARED_DATA / 'seed_study'} is absent: the original study's data are not redistributed")
    if not r_available():
        pytest.skip("R with lme4 + lmerTest is not installed")
    out = tmp_path_factory.mktemp("replication")
    assert main(["replicate", "--data", str(SHARED_DATA), "--out", str(out), "--n-boot", "100",
                 "--engine", "nbclient"]) == 0
    return out


def test_the_replication_renders_with_its_sections(replication):
    html = (replication / "replication.html").read_text()
    for text in ("1. Import", "2. Validate", "Percent slope differences", "Why the two formulas", "Word guess"):
        assert text in html
    assert "Traceback" not in html


def test_the_study_formula_matches_lme4_fitted_directly(replication):
    import rpy2.robjects as ro
    from rpy2.robjects import pandas2ri
    from rpy2.robjects.conversion import localconverter

    tables = replication / "tables"
    means = pd.read_parquet(tables / "study-python" / "response_means.parquet")
    ours = pd.read_csv(tables / "study-python" / "mixed_fixed.csv").set_index(["derivation", "term"])
    st = means[(means.condition == "steered") & (means.group != "Assistant")]
    for d, part in st.groupby("derivation"):
        with localconverter(ro.default_converter + pandas2ri.converter):
            ro.globalenv["d"] = ro.conversion.py2rpy(part[["mean_log_prob", "magnitude", "group", "role"]])
        ro.r("suppressPackageStartupMessages(library(lme4)); d$group <- factor(d$group); "
             "m <- lmer(mean_log_prob ~ magnitude * group + (1 | role), d)")
        names = list(ro.r("names(fixef(m))"))
        est = dict(zip(names, ro.r("fixef(m)")))
        se = dict(zip(names, ro.r("sqrt(diag(as.matrix(vcov(m))))")))
        for r_name in ("magnitude", "magnitude:groupLow Mental, High Physical"):
            term = r_name.replace("groupLow Mental, High Physical", "group[T.Low Mental, High Physical]")
            assert ours.loc[(d, term), "estimate"] == pytest.approx(est[r_name], rel=1e-4), (d, term)
            assert ours.loc[(d, term), "se"] == pytest.approx(se[r_name], rel=1e-3), (d, term)
