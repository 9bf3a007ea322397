"""The prepare task as the pipeline runs it: data/prepare.py's cache, then the cache's identity
for DVC (reports/data/<profile>[-gen].json) so DVC tracks a small file, not the cache."""

from __future__ import annotations

from pathlib import Path

from pixbench.runio import atomic_write_json, read_json


def data_identity(paths, spec) -> Path:
    """reports/data/<profile>[-gen].json: the cache's manifest (every array's sha256, the
    counts, classes, the data config), the identity DVC tracks instead of the cache itself. A
    multi-GB cache is never hashed or copied by DVC, and it may live anywhere
    (PIXBENCH_CACHE_DIR) while the pipeline stays recorded in the repo."""
    from pixbench.names import check_name

    name = check_name(spec.profile, "profile") + ("-gen" if spec.track == "gen" else "")
    return Path(paths.reports_dir) / "data" / f"{name}.json"


def prepare_and_publish(spec, paths, **kwargs) -> dict:
    """The prepare task, then its cache's identity for DVC (data_identity)."""
    from pixbench.data.prepare import cache_path, run

    out = run(spec, paths, **kwargs)
    manifest = read_json(cache_path(spec, paths) / "manifest.json", "cache manifest")
    atomic_write_json(data_identity(paths, spec), manifest)
    return out
