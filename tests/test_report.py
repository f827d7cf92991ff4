"""The report: one .qmd rendered without Quarto (nbclient + nbconvert), for the example run and a simulated
study, and checked in a real headless Chromium: every chart drawn, nothing fetched from the network, no
console errors; the screenshot is kept in tests/artifacts/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from animacy.analysis.render import qmd_to_notebook, render
from animacy.analysis.simulate import SimConfig, simulate
from animacy.resources import REPORT_SOURCE
from animacy.run import Run

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "example"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHARTS = "svg.marks, canvas.marks, img[src^='data:image/svg+xml'], img[src^='data:image/png']"


def test_qmd_becomes_a_notebook_with_injected_parameters():
    nb = qmd_to_notebook(REPORT_SOURCE.read_text(), {"run": "/x/run", "n_boot": 7})
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    k = next(i for i, c in enumerate(code) if "tags: [parameters]" in c)
    assert code[k + 1] == "run = '/x/run'\nn_boot = 7"
    assert nb.metadata["title"].startswith("How the role")
    # the report's cells hold no statistics of their own: they call animacy.analysis
    body = "\n".join(code)
    for forbidden in ("import statsmodels", "from statsmodels", "scipy", "sklearn", "groupby(", ".mean(", "np."):
        assert forbidden not in body, forbidden


def _browser_check(html: Path, screenshot: Path, min_charts: int) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (./setup.sh --dev installs it)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        requests, errors = [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        page.wait_for_load_state("networkidle")
        charts = page.locator(CHARTS)
        n = charts.count()
        sizes = [charts.nth(i).bounding_box() for i in range(n)]
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert n >= min_charts, f"only {n} charts drew"
    assert all(b and b["width"] > 50 and b["height"] > 50 for b in sizes), sizes
    external = [u for u in requests if not u.startswith(("file:", "data:", "about:"))]
    assert not external, external
    assert not errors, errors
    assert screenshot.stat().st_size > 10_000


def test_report_of_the_example_run_renders_and_draws_in_a_browser(tmp_path):
    assert Run(EXAMPLE).has("labels")
    html = render(EXAMPLE, tmp_path / "example", {"n_boot": 100}, engine="nbclient")
    text = html.read_text()
    for section in ("Design", "Behaviour", "by token position", "Steering effectiveness", "Mixed models",
                    "norm ratings", "Geometry", "Word-guess", "Direction validation"):
        assert section in text, section
    assert "Traceback" not in text and "Error" not in text.split("<body")[1][:200000].replace("errorbar", "")
    _browser_check(html, ARTIFACTS / "report-example.png", min_charts=10)


def test_report_of_a_simulated_study_renders(tmp_path):
    run = simulate(tmp_path / "sim", SimConfig(roles_per_group=12, tasks=4, replicates=3, tokens=80), quiet=True)
    html = render(run, tmp_path / "sim-report", {"n_boot": 100}, engine="nbclient")
    _browser_check(html, ARTIFACTS / "report-simulated.png", min_charts=10)
