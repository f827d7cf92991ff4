"""`animacy report`: analyse a run once, then render report/report.qmd from that analysis folder — with
Quarto when it is on PATH, otherwise by executing the same .qmd's cells (nbclient + ipykernel) and
exporting HTML (nbconvert). One source.

The fallback turns the .qmd into a notebook (markdown between fenced `{python}` cells), injects the
parameters after the cell tagged `parameters` (as Quarto and papermill do), runs it, and exports HTML
without the code. Charts are static SVG (vl-convert), and any script or stylesheet the exporter would
load from the network is removed, so the page renders offline.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from animacy.atomic import atomic_path
from animacy.errors import ConfigError, DataError
from animacy.resources import REPORT_SOURCE

_CELL = re.compile(r"```\{python\}\n(.*?)```", re.S)
# scripts or stylesheets from the network, and inline scripts that would import from it (mermaid)
_REMOTE = re.compile(r"<script[^>]*\bsrc=\"https?://[^\"]*\"[^>]*>\s*</script>|"
                     r"<link[^>]*\bhref=\"https?://[^\"]*\"[^>]*>|"
                     r"<script[^>]*>(?:(?!</script>).)*?import\(\s*\"https?://(?:(?!</script>).)*?</script>",
                     re.I | re.S)


def qmd_to_notebook(text: str, params: dict):
    """A notebook of the .qmd's markdown and python cells, with `params` injected."""
    import nbformat

    front = re.match(r"---\n(.*?)\n---\n", text, re.S)
    title = re.search(r'^title:\s*"?(.*?)"?$', front.group(1), re.M).group(1) if front else "animacy report"
    body = text[front.end():] if front else text
    cells, pos = [nbformat.v4.new_markdown_cell(f"# {title}")], 0
    for m in _CELL.finditer(body):
        md = body[pos:m.start()].strip()
        if md:
            cells.append(nbformat.v4.new_markdown_cell(md))
        code = m.group(1).rstrip()
        cells.append(nbformat.v4.new_code_cell(code))
        if "tags: [parameters]" in code:
            cells.append(nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
        pos = m.end()
    tail = body[pos:].strip()
    if tail:
        cells.append(nbformat.v4.new_markdown_cell(tail))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["title"] = title
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def report(out: str | Path, run=None, analysis: str | Path | None = None, options=None, source: str | None = None,
           engine: str = "auto") -> Path:
    """The write-up as `out`/report.html. Given a `run` (a validated `Run`), it is analysed once into
    `out`/tables first; given an existing `analysis` folder, that is rendered as it is."""
    from animacy.analysis.result import Analysis

    out = Path(out).resolve()
    if (run is None) == (analysis is None):
        raise ConfigError("report", "give either a run (or flat table) or --analysis DIR, not both")
    if run is not None:
        from animacy.analysis.pipeline import analyze

        analysis = analyze(run, out / "tables", options, source=source).path
    else:
        analysis = Analysis.load(analysis).path
    return render(out, {"analysis": str(Path(analysis).resolve())}, engine=engine)


def render(out: str | Path, params: dict, engine: str = "auto", timeout: int = 1200,
           source: Path = REPORT_SOURCE) -> Path:
    """Render `source` (the report, or the replication) with `params` into `out`/<name>.html (atomic) and
    return its path."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{source.stem}.html"
    quarto = shutil.which("quarto")
    if engine == "quarto" and not quarto:
        raise ConfigError("--engine quarto", "quarto is not on PATH")
    if quarto and engine in ("auto", "quarto"):
        work = out / "_quarto"
        work.mkdir(exist_ok=True)
        shutil.copy(source, work / source.name)
        shutil.copy(source.with_name("_quarto.yml"), work / "_quarto.yml")
        args = [quarto, "render", str(work / source.name), "--to", "html"]
        for k, v in params.items():
            args += ["-P", f"{k}:{v}"]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode:
            raise DataError(source, "did not render with Quarto: " + (done.stderr.strip().splitlines() or ["?"])[-1])
        shutil.move(work / f"{source.stem}.html", target)
        return target
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    nb = qmd_to_notebook(source.read_text(), params)
    from animacy.analysis.mixed_r import environment_without_r

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(out)}})
    try:
        client.execute(env=environment_without_r())
    except CellExecutionError as exc:
        label = re.search(r"#\| label: (\S+)", exc.args[0] if exc.args else "")
        raise DataError(source, f"failed in its cell '{label.group(1) if label else '?'}': {exc.ename}: "
                        f"{exc.evalue}", hint="animacy --debug shows the traceback") from exc
    for cell in nb.cells:  # warnings on stderr are for the log, not the reader
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    nbformat.write(nb, out / f"{source.stem}.ipynb")
    html, _ = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                           exclude_output_prompt=True, embed_images=True).from_notebook_node(nb)
    html = _REMOTE.sub("", html)
    with atomic_path(target) as tmp:
        tmp.write_text(html)
    return target
