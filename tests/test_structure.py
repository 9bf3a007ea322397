"""The house rules that a reviewer would otherwise count by hand: no import cycles in src/
(lazy imports included), no source file over 400 lines."""

from __future__ import annotations

from importgraph import SRC, all_modules, imported_modules, module_file

MAX_LINES = 400


def import_graph() -> dict[str, set[str]]:
    return {m: imported_modules(module_file(m), m) - {m} for m in all_modules()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None (iterative DFS)."""
    colour: dict[str, int] = {}
    for start in graph:
        if colour.get(start):
            continue
        stack, path = [(start, iter(sorted(graph[start])))], [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not colour.get(child):
                colour[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_source_file_over_400_lines():
    long = {str(f.relative_to(SRC)): n for f in (SRC / "pixbench").rglob("*.py")
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not long, long
