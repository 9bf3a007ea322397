"""The harness of the hostile-input suites: one case = one CLI call that must be refused.

A refusal is: a non-zero exit code, exactly one line on stderr starting `error:` that names
the field or file (`names`), no traceback, and no file under the work dir written, changed or
removed (a snapshot of paths, sizes and mtimes before and after)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".pytest_cache")]
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    from pixbench import cli

    monkeypatch.setattr(sys, "argv", ["pixbench", *args])
    monkeypatch.delenv("PIXBENCH_DEBUG", raising=False)
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_refused(args: list[str], names: str, root: Path, monkeypatch, capsys) -> str:
    """Run `pixbench ARGS` in `root`; assert a clean refusal naming `names`; return stderr."""
    before = snapshot(root)
    code, _, err = run_cli(args, monkeypatch, capsys)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code != 0, f"{args}: exit 0\n{err}"
    assert "Traceback" not in err, f"{args}: traceback\n{err}"
    assert len(lines) == 1, f"{args}: {len(lines)} lines on stderr\n{err}"
    assert names in lines[0], f"{args}: {names!r} not in {lines[0]!r}"
    after = snapshot(root)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{args}: changed files {changed[:5]}"
    return lines[0]
