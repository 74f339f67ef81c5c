"""The layering of DESIGN §1, read off the source tree (AST, nothing imported): the model package
at the bottom; ``export/`` and ``runtime/`` on it, never importing each other; ``profiling/``,
the CLI and the ``[serve]``/``[corpus]`` layers on top; no import cycle between modules."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Import name -> folder, as pyproject.toml maps them.
ROOTS = {"hieramamba": REPO / "hieramamba", "hieramamba.export": REPO / "export",
         "hieramamba.runtime": REPO / "runtime", "hieramamba.profiling": REPO / "profiling",
         "hieramamba.serving": REPO / "serving", "hieramamba.corpus": REPO / "corpus"}
# Parts of the hieramamba/ folder that sit on top of everything (they may import any layer).
TOP = ("hieramamba.cli",)


def modules() -> dict:
    """``{module name: path}`` of every source module of the package."""
    out = {}
    for name, root in ROOTS.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mod = ".".join([name] + parts)
            if name == "hieramamba" and any(mod == r or mod.startswith(r + ".") for r in ROOTS if r != name):
                continue
            out[mod] = path
    return out


def imports(mod: str, path: Path, known: set, top_level_only: bool) -> set:
    """Modules of the package that ``mod`` imports (relative imports resolved; ``from a import b``
    counts as ``a.b`` when that is a module). ``top_level_only``: imports that run when ``mod``
    is imported (not those inside functions)."""
    tree = ast.parse(path.read_text())
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # imports inside top-level try/if blocks run at import too
        nodes = [n for top in tree.body for n in ast.walk(top) if not isinstance(top, (ast.FunctionDef, ast.ClassDef))]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[: len(up) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n and n != mod:
                found.add(n)
    return found


def layer(mod: str) -> str:
    if any(mod == t or mod.startswith(t + ".") for t in TOP):
        return "top"
    for name in ("hieramamba.export", "hieramamba.runtime", "hieramamba.profiling", "hieramamba.serving",
                 "hieramamba.corpus"):
        if mod == name or mod.startswith(name + "."):
            return name.split(".")[1]
    return "model"


def test_the_source_tree_is_found():
    mods = modules()
    assert {"hieramamba.artifacts", "hieramamba.stage_table", "hieramamba.export.stages",
            "hieramamba.runtime.scheduler", "hieramamba.profiling.bench", "hieramamba.cli"} <= set(mods)
    assert len(mods) > 60


def test_layers_import_only_downwards():
    mods = modules()
    known = set(mods)
    allowed = {"model": {"model"}, "export": {"model", "export"}, "runtime": {"model", "runtime"},
               "profiling": {"model", "export", "runtime", "profiling"},
               # Triton serving and corpus runs sit on the runtime's grounding pipeline (DESIGN §7)
               "serving": {"model", "runtime", "serving"}, "corpus": {"model", "runtime", "corpus"},
               "top": {"model", "export", "runtime", "profiling", "serving", "corpus", "top"}}
    bad = []
    for mod, path in mods.items():
        for dep in imports(mod, path, known, top_level_only=False):
            if layer(dep) not in allowed[layer(mod)]:
                bad.append(f"{mod} ({layer(mod)}) imports {dep} ({layer(dep)})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    mods = modules()
    known = set(mods)
    graph = {m: imports(m, p, known, top_level_only=True) for m, p in mods.items()}
    # A package's __init__ importing its own submodules is the normal direction, not a cycle.
    for m in graph:
        graph[m] = {d for d in graph[m] if not m.startswith(d + ".")}
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The rules can fail: a runtime module importing the exporter is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("from hieramamba.export import stages\n")
    mods = modules()
    assert "hieramamba.export.stages" in imports("hieramamba.runtime.bad", bad, set(mods), top_level_only=False)
    assert layer("hieramamba.runtime.bad") == "runtime" and layer("hieramamba.export.stages") == "export"
