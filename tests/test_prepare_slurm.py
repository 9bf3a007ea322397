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
