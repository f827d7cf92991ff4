"""The report: one .qmd rendered without Quarto (nbclient + nbconvert) from one analysis folder, for the
example run and a simulated study, and checked in a real headless Chromium: every chart drawn, nothing
fetched from the network, no console errors; the screenshot is kept in tests/artifacts/. An output folder
holding another run's analysis is refused, and input errors end in exit 2 without a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from animacy.analysis.pipeline import AnalyzeOptions
from animacy.analysis.render import qmd_to_notebook, report
from animacy.analysis.result import Analysis
from animacy.analysis.simulate import SimConfig, simulate
from animacy.cli import main
from animacy.resources import REPORT_SOURCE
from animacy.run import Run

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "example"
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHARTS = "svg.marks, canvas.marks, img[src^='data:image/svg+xml'], img[src^='data:image/png']"


def test_qmd_becomes_a_notebook_with_injected_parameters():
    nb = qmd_to_notebook(REPORT_SOURCE.read_text(), {"analysis": "/x/analysis"})
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    k = next(i for i, c in enumerate(code) if "tags: [parameters]" in c)
    assert code[k + 1] == "analysis = '/x/analysis'"
    assert nb.metadata["title"].startswith("How the role")
    # the report's cells hold no statistics and read no run: they load one analysis folder and draw it
    body = "\n".join(code)
    for forbidden in ("import statsmodels", "from statsmodels", "scipy", "sklearn", "groupby(", ".mean(", "np.",
                      "analyze(", "evaluate(", "response_means", "open_source", "Run(", ".read("):
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
    html = report(tmp_path / "example", Run(EXAMPLE), options=AnalyzeOptions(n_boot=100, quiet=True),
                  engine="nbclient")
    text = html.read_text()
    for section in ("Design", "Behaviour", "by token position", "Steering effectiveness", "Mixed models",
                    "norm ratings", "Geometry", "Word-guess", "Direction validation", "Ablating the assistant axis",
                    "Persona drift over a conversation", "Trait expression under steering"):
        assert section in text, section
    for absent in ("holds no conversations", "steered no trait", "did not ablate"):  # the example has them all
        assert absent not in text, absent
    assert "Traceback" not in text and "Error" not in text.split("<body")[1][:200000].replace("errorbar", "")
    _browser_check(html, ARTIFACTS / "report-example.png", min_charts=13)


def test_report_of_a_simulated_study_renders(tmp_path):
    run = simulate(tmp_path / "sim", SimConfig(roles_per_group=12, tasks=4, replicates=3, tokens=80), quiet=True)
    tables = tmp_path / "analysis"
    assert main(["analyze", str(run), "--out", str(tables), "--n-boot", "100", "--quiet"]) == 0
    assert main(["report", "--analysis", str(tables), "--out", str(tmp_path / "sim-report")]) == 0
    html = tmp_path / "sim-report" / "report.html"
    _browser_check(html, ARTIFACTS / "report-simulated.png", min_charts=10)
    assert "first 100 tokens" in html.read_text()


def _tiny(tmp_path, name, seed=0):
    cfg = SimConfig(roles_per_group=5, controls=1, tasks=2, replicates=2, tokens=12, magnitudes=(0.0, 2.0),
                    derivations=("role_minus_assistant_response",), seed=seed)
    return simulate(tmp_path / name, cfg, quiet=True)


def test_an_output_folder_of_another_run_is_refused_and_the_same_runs_is_replaced_whole(tmp_path, capsys):
    a, b, out = _tiny(tmp_path, "a"), _tiny(tmp_path, "b", seed=1), tmp_path / "out"
    args = ["--n-boot", "50", "--no-umap", "--quiet"]
    assert main(["analyze", str(a), "--out", str(out), *args]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["analyze", str(b), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert f"holds the analysis of {a.resolve()}" in err and "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
    (out / "stale_table.csv").write_text("x\n1\n")  # a table the next analysis of the same run does not make
    assert main(["analyze", str(a), "--out", str(out), *args, "--formula", "log_prob ~ magnitude + (1 | role)"]) == 0
    assert not (out / "stale_table.csv").exists()
    assert set(Analysis.load(out)) | {"analysis.json"} == {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["analyze", str(a), "--out", str(tmp_path / "other"), *args]) == 2
    assert "not an earlier analysis" in capsys.readouterr().err


def test_report_input_errors_end_in_exit_2_naming_the_file(tmp_path, capsys):
    a = _tiny(tmp_path, "a")
    assert main(["report", "--analysis", str(a), "--out", str(tmp_path / "r")]) == 2
    assert "is not an analysis folder" in capsys.readouterr().err
    out = tmp_path / "an"
    assert main(["analyze", str(a), "--out", str(out), "--n-boot", "50", "--no-umap", "--quiet"]) == 0
    (out / "roles.csv").unlink()
    assert main(["report", "--analysis", str(out), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "roles.csv" in err and "missing" in err and "Traceback" not in err
    manifest = json.loads((out / "analysis.json").read_text())
    (out / "analysis.json").write_text(json.dumps([manifest]))
    assert main(["report", "--analysis", str(out), "--out", str(tmp_path / "r")]) == 2
    assert "not an analysis manifest" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.html").exists()
