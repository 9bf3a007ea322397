"""Imports in src/pixbench go one way: a module imports only from its own layer or those below.

The layers, lowest first (README, Layout): the base modules; models/ (no I/O, no config);
config/; data/; eval/; tasks/ with report/ and verify/ (the task table imports every task
body); launch.py; study/; cli/. Every import counts, module level or inside a function (a lazy
import is still a dependency). A new top-level file or folder fails here until it is placed in
LAYERS.

Parsing every file whole takes ~0.5 s (importgraph.py, for the structure and DVC tests); this
test parses only the import statements (~0.05 s), and checks on a sample that it finds what the
whole-file parse finds.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from importgraph import SRC, all_modules, imported_modules, module_file, resolved

PACKAGE = SRC / "pixbench"

# Top-level entry of src/pixbench (file or folder) -> layer; lower never imports higher.
LAYERS = {
    "__init__.py": 0, "errors.py": 0, "runio.py": 0, "distributed.py": 0, "paper.py": 0,
    "rng.py": 0, "procs.py": 0, "names.py": 0, "cluster.py": 0,
    "models": 1,
    "config": 2,
    "data": 3,
    "eval": 4,
    "tasks": 5, "report": 5, "verify": 5,
    "launch.py": 6,
    "study": 7,
    "cli": 8,
}

# An import statement at the start of a line, indented or not (module level or in a function).
AT_LINE_START = re.compile(r"^[ \t]*(?:from[ \t]+[.\w]+[ \t]+import\b|import[ \t]+[\w.])", re.M)
# One that a line-start scan would miss (`x = 1; import ...`, `if x: from pixbench ...`): the
# file is then parsed whole, as is one with a backslash-continued import.
MID_LINE = re.compile(r"[;:][ \t]*(?:from[ \t]+(?:\.|pixbench)|import[ \t]+pixbench)")
PAREN = re.compile(r"\bimport[ \t]*\(")
MAX_IMPORT_LINES = 100


def import_nodes(text: str) -> list[ast.stmt]:
    """The import statements of a file's source, each parsed alone. (A docstring line that is a
    valid import statement counts as one: the scan errs towards reporting.)"""
    if MID_LINE.search(text):
        return _whole(text)
    nodes = []
    for match in AT_LINE_START.finditer(text):
        end = _line_end(text, match.start())
        line = text[match.start():end]
        if line.rstrip().endswith("\\"):
            return _whole(text)
        nodes += _statement(text, match.start(), end, parenthesised=bool(PAREN.search(line)))
    return nodes


def _whole(text: str) -> list[ast.stmt]:
    return [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Import | ast.ImportFrom)]


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _statement(text: str, start: int, end: int, parenthesised: bool) -> list[ast.stmt]:
    """The import at text[start:end], taking following lines while its parentheses are open
    (`from x import (a,  # (a comment)\n b)`); none for a docstring line that reads like one."""
    for _ in range(MAX_IMPORT_LINES):
        try:
            return ast.parse(textwrap.dedent(text[start:end])).body
        except SyntaxError:
            if not parenthesised or end >= len(text):
                return []
            end = _line_end(text, end + 1)
    return []


def pixbench_imports(path: Path, name: str) -> set[str]:
    """The pixbench modules `path` (module `name`) imports, resolved as importgraph does."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set().union(*(resolved(n, package) for n in import_nodes(path.read_text())))
    return {m for m in out if m.split(".")[0] == "pixbench" and module_file(m)} - {name}


def entry(module: str) -> str:
    """The top-level file or folder of src/pixbench that holds `module`."""
    return module_file(module).relative_to(PACKAGE).parts[0]


def upward(graph: dict[str, set[str]], layer_of) -> list[str]:
    """Every import `a -> b` where b's layer is above a's (unplaced modules are reported by
    test_every_module_is_placed_in_a_layer)."""
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb > la:
                bad.append(f"{a} -> {b} (layer {la} -> {lb})")
    return bad


def test_every_module_is_placed_in_a_layer():
    unplaced = sorted({entry(m) for m in all_modules()} - set(LAYERS))
    assert not unplaced, ("src/pixbench entries with no layer (add them to LAYERS in "
                          "tests/test_layers.py): " + ", ".join(unplaced))


def test_no_module_imports_a_layer_above_its_own():
    graph = {m: pixbench_imports(module_file(m), m) for m in all_modules()}
    bad = upward(graph, lambda m: LAYERS.get(entry(m)))
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_layer_table_names_only_what_exists():
    gone = sorted(k for k in LAYERS if not (PACKAGE / k).exists())
    assert not gone, f"LAYERS places entries that no longer exist: {gone}"


def test_the_check_finds_a_planted_upward_import():
    layers = {"low": 0, "mid": 1, "high": 2}
    graph = {"low": {"high"}, "mid": {"low", "mid"}, "high": {"mid"}}
    assert upward(graph, layers.get) == ["low -> high (layer 0 -> 2)"]


# Files with many imports inside functions, compared with the whole-file parse (all of them
# would take as long as parsing everything).
LAZY_IMPORTERS = ("pixbench.cli.study", "pixbench.cli.data", "pixbench.study.dag",
                  "pixbench.study.submit", "pixbench.launch", "pixbench.data.shards")


def _found(text: str) -> set[str]:
    return {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name
            for n in import_nodes(text)}


def test_the_import_scan_finds_what_a_whole_parse_finds():
    """Lazy, parenthesised and one-line compound imports; a docstring line that reads like an
    import but is not one counts for nothing. Then, against the whole-file parse, the files
    with the most lazy imports."""
    assert _found('"""Docs:\nfrom pixbench.x import y, lazily.\n"""\nimport os\n'
                  "def f():\n    from pixbench.cli.options import (CONTEXT,\n"
                  "                                      mount)\n"
                  "    from pixbench import launch\n") == {"os", "pixbench.cli.options",
                                                             "pixbench"}
    assert _found("x = 1\nif x: import pixbench.study\n") == {"pixbench.study"}
    assert _found("import a, \\\n  b\n") == {"a"}
    sample = [m for m in LAZY_IMPORTERS if module_file(m)]
    assert len(sample) >= 3
    for m in sample:
        assert pixbench_imports(module_file(m), m) == imported_modules(module_file(m), m) - {m}, m
