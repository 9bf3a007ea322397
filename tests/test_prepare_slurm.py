"""`pixbench data prepare --launcher slurm --shards K` against a real SLURM (the local test
cluster; skipped without it): the job array and the merge job give the bytes of a local
prepare."""

from __future__ import annotations

import json

import pytest

from hostile import run_cli
from test_prepare_stream import _bytes, cfg, tree  # noqa: F401 - the tree fixture
from test_slurm import REASON, slurm_env  # noqa: F401 - the SLURM_CONF fixture
from pixbench.data import stream
from pixbench.data.prepare import prepare

pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def test_array_shards_and_merge_job_equal_a_local_prepare(workdir, tiny_params, tree,
                                                          monkeypatch, capsys):
    from conftest import write_params

    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)  # planned here: 16-image chunks
    prepare(cfg(tree, image_size=8), workdir / "ref", None, workers=1)
    monkeypatch.setenv("PIXBENCH_DATA_ROOT", str(tree.parent))
    tiny_params["profiles"]["tiny"]["data"] = cfg("tree", image_size=8).model_dump()
    write_params(workdir / "params.yaml", tiny_params)
    code, out, err = run_cli(["data", "prepare", "--launcher", "slurm", "--cluster", "local",
                              "--shards", "3", "--workers", "1"], monkeypatch, capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["state"] == "DONE" and len(got["shard_jobs"]) == 3, got
    new, ref = _bytes(workdir / "data" / "tiny"), _bytes(workdir / "ref")
    manifests = [json.loads(d.pop("manifest.json")) for d in (new, ref)]
    assert new == ref  # every array byte; the manifests differ only in data.root's spelling
    assert [{k: m[k] for k in ("mean", "std", "counts")} for m in manifests] == \
        [{k: manifests[1][k] for k in ("mean", "std", "counts")}] * 2


def _sacct_state(job_id: str) -> str:
    import subprocess

    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                         capture_output=True, text=True).stdout.split()
    return out[0] if out else "UNKNOWN"


def test_a_shard_cancelled_while_pending_never_gets_a_merge(workdir, tiny_params, tree,
                                                             monkeypatch, capsys):
    """Shards submitted held (pending); one is cancelled, the others released. SLURM should
    cancel the merge (afterok, --kill-on-invalid-dep); if it starts anyway (seen on this
    cluster, issue 26) the merge itself refuses, naming the shard. Either way: no cache, and
    the work dir kept for a re-run."""
    import subprocess
    import time

    from conftest import write_params
    from pixbench import cluster

    real = cluster.make_executor

    def held_shards(profile, folder, name, task=None, dependency=None):
        ex = real(profile, folder, name, task, dependency)
        if name.endswith("-shards"):
            ex.update_parameters(slurm_additional_parameters={"hold": True})
        return ex

    monkeypatch.setattr(cluster, "make_executor", held_shards)
    monkeypatch.setattr(stream, "CHUNK_BYTES", 1)  # planned here: 16-image chunks
    monkeypatch.setenv("PIXBENCH_DATA_ROOT", str(tree.parent))
    tiny_params["profiles"]["tiny"]["data"] = cfg("tree", image_size=8).model_dump()
    write_params(workdir / "params.yaml", tiny_params)
    code, out, err = run_cli(["data", "prepare", "--launcher", "slurm", "--cluster", "local",
                              "--shards", "3", "--workers", "1", "--no-wait"], monkeypatch, capsys)
    assert code == 0, err
    got = json.loads(out)
    shard_jobs, merge_id = got["shard_jobs"], got["job_id"]
    subprocess.run(["scancel", shard_jobs[1]], check=True)
    subprocess.run(["scontrol", "release", shard_jobs[0], shard_jobs[2]], check=True)
    end = time.monotonic() + 120
    while _sacct_state(merge_id) in ("PENDING", "RUNNING", "UNKNOWN", "REQUEUED"):
        assert time.monotonic() < end, _sacct_state(merge_id)
        time.sleep(1)
    state = _sacct_state(merge_id)
    assert state in ("CANCELLED", "FAILED"), state
    if state == "FAILED":  # it ran: the merge's own check refused
        logs = "".join(p.read_text() for p in (workdir / "logs").rglob(f"{merge_id}*.err"))
        assert "not merged: shard 1 of 3" in logs, logs[-3000:]
    assert not (workdir / "data" / "tiny").exists()
    work = [p for p in (workdir / "data").iterdir() if ".work-" in p.name]
    assert len(work) == 1 and (work[0] / stream.PLAN).is_file()
