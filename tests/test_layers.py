"""The layers point down only: quantize <- models <- datautils <- rptq <- the command line (main.py, rptq/cli.py,
scripts/, bench/), with rptq/base.py at the bottom for all of them; and no import circle. Read from the source's
import statements (those inside functions too), so a lazy import cannot hide a wrong direction."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rptq", "quantize", "models", "scripts", "bench")
BOTTOM = "rptq.base"
CLI = ("main", "rptq.cli", "scripts", "bench")


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules():
    files = [ROOT / "main.py", ROOT / "datautils.py"] + [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(name, path, modules):
    """The project modules that `name` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules)
    return found


def layer(name):
    if name == BOTTOM:
        return 0
    if name.split(".")[0] == "quantize":
        return 1
    if name.split(".")[0] == "models":
        return 2
    if name == "datautils":
        return 3
    if any(name == c or name.startswith(f"{c}.") for c in CLI):
        return 5
    return 4  # rptq: the method, its records and the library API


def graph():
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_import_points_down_or_sideways():
    wrong = [(a, b) for a, targets in graph().items() for b in targets if layer(b) > layer(a)]
    assert wrong == []


def test_the_bottom_module_imports_nothing_of_the_project():
    assert graph()[BOTTOM] == set()


def test_no_import_circle():
    edges = graph()
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                raise AssertionError(f"import circle: {' -> '.join(path[path.index(nxt):] + [nxt])}")
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    """The checks above could pass by reading nothing: this one shows the reader finds what they look for."""
    edges = graph()
    assert "rptq.base" in edges["quantize.gptq"] and "rptq.granularity" in edges["rptq.config"]  # in a function
    assert {"rptq.config", "rptq.base"} <= edges["rptq.placement"]  # relative: from .config import ...
    assert layer("rptq.cli") > layer("rptq.api") > layer("datautils") > layer("models.loader") > layer("quantize.gptq")
