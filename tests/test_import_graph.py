"""analysis must never reach torch or the collector: statically (import graph) and at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from animacy.analysis.mixed_r import environment_without_r

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = ("torch", "transformers", "vllm", "accelerate", "gguf", "animacy.collect")
# the halves and the shared core, by source folder
PACKAGES = {"animacy.analysis": REPO / "analysis", "animacy": REPO / "animacy"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _module_file(name: str) -> Path | None:
    for pkg, folder in PACKAGES.items():
        if name == pkg:
            return folder / "__init__.py"
        if name.startswith(pkg + "."):
            rest = name[len(pkg) + 1:].split(".")
            if rest[0] in ("collect",):
                return None
            f = folder.joinpath(*rest).with_suffix(".py")
            return f if f.exists() else None
    return None


def test_analysis_import_graph_never_reaches_torch_or_collect():
    roots = [f"animacy.analysis.{p.stem}" for p in (REPO / "analysis").glob("*.py")]
    roots += ["animacy.sources"]
    seen, stack, bad = set(), list(roots), []
    while stack:
        mod = stack.pop()
        if mod in seen:
            continue
        seen.add(mod)
        f = _module_file(mod)
        if f is None:
            continue
        for imp in _imports(f):
            if any(imp == x or imp.startswith(x + ".") for x in FORBIDDEN):
                bad.append(f"{mod} imports {imp}")
            stack.append(imp)
    assert not bad, bad
    # the walk followed the imports: it reached modules several steps from its roots
    assert {"animacy.analysis.mixed_engine", "animacy.run", "animacy.schema", "animacy.validate"} <= seen


def test_the_cli_imports_the_collector_only_inside_its_collect_commands():
    """The dispatcher may reach the collector, but only lazily, from the subcommands that need it."""
    tree = ast.parse((REPO / "animacy" / "cli.py").read_text())
    top = {n.module for n in tree.body if isinstance(n, ast.ImportFrom)} | {
        a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and (m.startswith("animacy.collect") or m.split(".")[0] in FORBIDDEN) for m in top)
    lazy = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
            for n in ast.walk(f) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("animacy.collect")}
    assert lazy == {"cmd_collect", "cmd_demo"}


def test_simulate_and_analyze_run_with_torch_unimportable(tmp_path):
    """A real process in which importing torch fails, as in an environment without it."""
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'vllm') or name.startswith('animacy.collect'):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
from animacy.cli import main
assert main(['simulate', '--out', r'{tmp_path / "run"}', '--quiet', '--roles', '3', '--tokens', '20']) == 0
assert main(['analyze', r'{tmp_path / "run"}', '--out', r'{tmp_path / "out"}', '--quiet']) == 0
assert not any(m.startswith(('torch', 'transformers', 'animacy.collect')) for m in sys.modules)
print('ok')
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=environment_without_r())
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr
