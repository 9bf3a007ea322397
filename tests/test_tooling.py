"""The tooling outside the installed package: the GPU validation kit (tools/gpucheck) and the
compute benchmark suite (bench/benchsuite) run from the checkout with their folders on the path
(the Makefile's TOOLS_PATH, pyproject's pytest `pythonpath`); the library never imports them,
the package holds only pixbench, and the suite's command (`make bench` = `python -m
benchsuite`) refuses bad flags in one line, exit code 2, as pixbench's CLI does.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLING = {"gpucheck", "benchsuite"}
GONE = ("pixbench.bench", "pixbench.gpucheck")  # where they lived before


def _imported_tops(path: Path) -> set[str]:
    """Top-level names of every absolute import in a file (module level and lazy)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def _tools_path() -> list[str]:
    text = (ROOT / "Makefile").read_text()
    line = re.search(r"^TOOLS_PATH\s*:?=\s*(.+)$", text, re.M).group(1)
    return [p.replace("$(CURDIR)/", "") for p in line.split(":")]


def test_the_library_never_imports_the_tooling():
    bad = {}
    for f in sorted((ROOT / "src" / "pixbench").rglob("*.py")):
        text = f.read_text()
        found = (_imported_tops(f) & TOOLING) | {g for g in GONE if g in text}
        if found:
            bad[str(f.relative_to(ROOT))] = sorted(found)
    assert not bad, bad


def test_packaging_finds_only_pixbench():
    from setuptools import find_namespace_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    found = find_namespace_packages(where=str(ROOT / find["where"][0]), include=find["include"])
    assert "pixbench" in found and {p.split(".")[0] for p in found} == {"pixbench"}
    with_code = [p for p in found if p.startswith(GONE)
                 and any((ROOT / "src" / p.replace(".", "/")).glob("*.py"))]
    assert not with_code


def test_make_and_pytest_put_the_same_folders_on_the_path():
    pythonpath = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]["pythonpath"]
    assert _tools_path() == [*pythonpath, "src"]
    assert (ROOT / "tools" / "gpucheck" / "__main__.py").is_file()
    assert (ROOT / "bench" / "benchsuite" / "__main__.py").is_file()
    makefile = (ROOT / "Makefile").read_text()
    assert "-m benchsuite --suite auto" in makefile and "-m gpucheck $(GPU_CHECK_ARGS)" in makefile


@pytest.mark.parametrize("module", ["benchsuite", "gpucheck", "gpucheck.wheels"])
def test_each_tool_runs_from_the_checkout_with_the_makefiles_path(module):
    """`python -m X --help` with the Makefile's TOOLS_PATH and nothing else (the GPU node's
    way: pixbench need not be installed; src/ is on the path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in _tools_path())}
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python -m {module}")


# ------------------------------------------------------------------- the suite's command line


def test_bench_suite_reaches_the_runner(monkeypatch, tmp_path):
    import benchsuite.cli_bench as cli_bench

    seen = {}
    monkeypatch.setattr(cli_bench, "bench_command", lambda suite, out, threads: seen.update(
        suite=suite, out=out, threads=threads))
    assert cli_bench.main(["--suite", "quick", "--threads", "2", "--out", str(tmp_path)]) == 0
    assert seen == {"suite": "quick", "out": tmp_path, "threads": 2}
    assert cli_bench.main([]) == 0 and seen["suite"] == "auto" and seen["threads"] is None
    # `make bench BENCH_ARGS="--suite quick"`: the last --suite wins
    assert cli_bench.main(["--suite", "auto", "--suite", "quick"]) == 0
    assert seen["suite"] == "quick"


@pytest.mark.parametrize(("args", "flag"), [
    (["--threads", "-1"], "--threads"),
    (["--threads", "0"], "--threads"),
    (["--threads", "x"], "--threads"),
    (["--suite", "nope"], "--suite"),
    (["--profile", "quick"], "--profile"),  # a params.yaml profile: not the suite's flag
])
def test_bench_bad_flags_are_one_line_exit_2(args, flag, monkeypatch, capsys):
    import benchsuite.cli_bench as cli_bench

    monkeypatch.setattr(cli_bench, "bench_command", lambda *a: pytest.fail("ran"))
    with pytest.raises(SystemExit) as exc:
        cli_bench.main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and flag in err
    assert len(err.strip().splitlines()) == 1, err


def test_bench_user_error_is_one_line_exit_2(monkeypatch, capsys):
    import benchsuite.cli_bench as cli_bench
    from pixbench.errors import UserError

    def refuse(*_):
        raise UserError("bench profile 'gpu' needs a CUDA device; none is visible")

    monkeypatch.setattr(cli_bench, "bench_command", refuse)
    assert cli_bench.main(["--suite", "gpu"]) == 2
    assert capsys.readouterr().err == ("error: bench profile 'gpu' needs a CUDA device; "
                                       "none is visible\n")
