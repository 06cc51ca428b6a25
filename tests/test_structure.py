"""The house rules, checked in CI: the import contract (layers, the wall between the runtime and
the lab, protect/ as a method library), no import circle, no private name used from outside its
module, small modules and functions, and ruff and mypy clean with the committed configuration.

The configuration lives in ``pyproject.toml``; docs/decisions/0015-runtime-and-lab.md says why.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dicom_gateway"
BIN = Path(sys.executable).parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed in {BIN}: scripts/setup.sh --test installs it")
    return path


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, list[str], int]]:
    """``(module imported, names imported from it, line)`` for every import in the file,
    relative ones resolved; ``from package import module`` counts as importing the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            plain = []
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    yield f"{source}.{alias.name}", [], node.lineno
                else:
                    plain.append(alias.name)
            if plain:
                yield source, plain, node.lineno


def _graph() -> dict[str, set[str]]:
    modules = dict(_modules())
    known = set(modules)
    return {name: {target for target, _, _ in _imports(name, path, known) if target in known
                   and target != name}
            for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_contract_holds() -> None:
    """Layers, the runtime/lab wall, protect/ as a method library, a torch-free seal/."""
    run = subprocess.run([str(_tool("lint-imports")), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


def test_no_import_circle() -> None:
    graph = _graph()
    assert len(graph) > 40 and graph["dicom_gateway.stage"]  # the walk sees the package
    assert _cycles(graph) == []


def test_the_circle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _private_uses(name: str, path: Path, known: set[str], root: Path = ROOT) -> Iterator[str]:
    """``_name``s taken from another module of the package: imported by name, or read as an
    attribute of a module imported whole."""
    aliases: dict[str, str] = {}
    for source, names, line in _imports(name, path, known):
        if not source.startswith("dicom_gateway") or source == name:
            continue
        for imported in names:
            if imported.startswith("_") and not imported.startswith("__"):
                yield f"{path.relative_to(root)}:{line}: {imported} from {source}"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dicom_gateway"):
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in known:
                    aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and aliases[node.value.id] != name:
            yield f"{path.relative_to(root)}:{node.lineno}: {node.value.id}.{node.attr}"


def test_no_private_name_is_used_from_outside_its_module() -> None:
    """The package and the benchmarks use only public names of each other's modules (the
    tests may look inside: they are the modules' own checks)."""
    modules = dict(_modules())
    known = set(modules)
    files = [*modules.items(), ("bench_protect", ROOT / "bench" / "protect"),
             ("bench_passthrough", ROOT / "bench" / "passthrough"),
             ("bench_deid", ROOT / "bench" / "deid"),
             ("bench_hostile", ROOT / "bench" / "hostile")]
    found = [use for name, path in files for use in _private_uses(name, path, known)]
    assert found == []


def test_the_private_name_check_catches_both_forms(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from dicom_gateway.protect.options import _resolved, option\n"
                     "from dicom_gateway.protect import options as o\n"
                     "print(o._is_number, o.parse_epsilon, o.__name__)\n")
    found = list(_private_uses("probe", probe, set(dict(_modules())), tmp_path))
    assert [f.partition(": ")[2] for f in found] == [
        "_resolved from dicom_gateway.protect.options", "o._is_number"]


def test_modules_and_functions_are_small() -> None:
    big = []
    for _, path in _modules():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            big.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    big.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} "
                               f"{length} lines")
    assert big == []


def test_ruff() -> None:
    run = subprocess.run([str(_tool("ruff")), "check", "--no-cache", "."], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_mypy() -> None:
    run = subprocess.run([str(_tool("mypy")), "--no-incremental"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Success" in run.stdout
