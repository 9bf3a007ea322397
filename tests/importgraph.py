"""The pixbench import graph read from the source (ast), for the structure and DVC tests: every
`import` counts, at module level or inside a function (lazy imports are still dependencies)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def resolved(node: ast.stmt, package: str) -> set[str]:
    """The module names an import statement of a module in `package` may load."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    base = node.module or ""
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
    return {base} | {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`


def imported_modules(path: Path, name: str) -> set[str]:
    """pixbench modules imported anywhere in a file (module level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set().union(*(resolved(n, package) for n in ast.walk(ast.parse(path.read_text()))))
    return {m for m in out if m.split(".")[0] == "pixbench" and module_file(m)}


def closure(roots: set[str]) -> set[Path]:
    """Every file reachable from the roots through pixbench imports, with parent packages."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b runs a
        todo += imported_modules(module_file(name), name)
    return {module_file(n).relative_to(ROOT) for n in seen}


def all_modules() -> list[str]:
    out = []
    for f in sorted((SRC / "pixbench").rglob("*.py")):
        parts = f.relative_to(SRC).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out
