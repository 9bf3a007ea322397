"""The launcher without a scheduler: profiles, launcher choice, the checkpointable job."""

from __future__ import annotations

import pickle

import pytest

from pixbench import cluster, launch
from pixbench.tasks.table import Task
from pixbench.config import Paths, load_params, make_classify_spec
from pixbench.errors import UserError
from conftest import make_tiny_cache


def test_repo_cluster_profiles_validate():
    for path in sorted(cluster.CLUSTER_DIR.glob("*.yaml")):  # their tasks: keys too
        assert launch.load_task_cluster(path.stem).partition


def test_bad_cluster_profile_names_file_and_field(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXBENCH_CLUSTER_DIR", str(tmp_path))
    (tmp_path / "c.yaml").write_text("partition: gpu\ngpus: 8\n")
    with pytest.raises(UserError, match=r"c.yaml: gpus: unknown key"):
        cluster.load_cluster("c")
    (tmp_path / "c.yaml").write_text("partition: gpu\ntimeout_min: soon\n")
    with pytest.raises(UserError, match=r"c.yaml: timeout_min: Input should be a valid integer"):
        cluster.load_cluster("c")
    with pytest.raises(UserError, match="cluster profile not found.*known: c"):
        cluster.load_cluster("nope")


def test_launcher_resolution(monkeypatch):
    monkeypatch.delenv("PIXBENCH_CLUSTER", raising=False)
    assert launch.resolve_launcher(None, None) == ("local", None)
    with pytest.raises(UserError, match="needs --cluster"):
        launch.resolve_launcher("slurm", None)
    with pytest.raises(UserError, match="must be 'local' or 'slurm'"):
        launch.resolve_launcher("k8s", None)
    monkeypatch.setattr(launch.shutil, "which", lambda _: None)
    monkeypatch.setenv("PIXBENCH_CLUSTER", "local")
    with pytest.raises(UserError, match="sbatch is not on PATH"):
        launch.resolve_launcher(None, None)


def test_task_job_pickles_and_checkpoint_resumes_same_spec(tiny_project):
    spec = make_classify_spec(load_params(tiny_project), size=None, patch=4, seed=0)
    job = launch.TaskJob("classify", spec.canonical(), launch._abs_paths(Paths()), "restart")
    again = pickle.loads(pickle.dumps(job))
    metrics = again()
    assert metrics["run_id"] == "classify-xxs-p4-s0"
    delayed = job.checkpoint()
    requeued = delayed.function
    assert isinstance(requeued, launch.TaskJob) and requeued is not job
    assert requeued.spec == job.spec and requeued.stale == "error"  # never discards the run
    assert requeued() == metrics  # the requeued instance finds the finished run


def test_local_sweep_skips_finished_cells(tiny_project, monkeypatch):
    params = load_params(tiny_project)
    specs = [make_classify_spec(params, size=None, patch=p, seed=0) for p in (4, 8)]
    rows = launch.sweep(specs, Paths(), launcher="local", cluster=None)
    assert [r["state"] for r in rows] == ["DONE", "DONE"] and all("top1" in r for r in rows)
    monkeypatch.setattr(Task, "run", lambda *a, **k: pytest.fail("re-ran a finished cell"))
    rows = launch.sweep(specs, Paths(), launcher="local", cluster=None)
    assert sorted(r["run_id"] for r in rows) == ["classify-xxs-p4-s0", "classify-xxs-p8-s0"]


def test_the_merge_job_depends_on_the_shards_and_dies_with_them(monkeypatch, tmp_path):
    """Without a cluster: the merge job's executor is made with the shard jobs as its
    dependency, which `make_executor` turns into afterok + kill-on-invalid-dep."""
    from pixbench import cluster
    from pixbench.data import shards, stream

    made = []

    class Job:
        def __init__(self, i):
            self.job_id = str(i)

    class Executor:
        def __init__(self, name, dependency):
            made.append((name, dependency))

        def batch(self):
            import contextlib
            return contextlib.nullcontext()

        def submit(self, job):
            return Job(len(made) * 10 + id(job) % 7)

    monkeypatch.setattr(cluster, "load_cluster", lambda name: object())
    monkeypatch.setattr(cluster, "make_executor",
                        lambda profile, folder, name, task=None, dependency=None:
                        Executor(name, dependency))
    monkeypatch.setattr(shards, "pending_shards", lambda work, n: [0, 1])
    monkeypatch.setattr(stream, "read_plan", lambda work: {"out_dir": str(tmp_path)})
    got = shards.submit(tmp_path, "prep", shards=2, workers=1, cluster="x", logs=tmp_path,
                        wait=False)
    assert made[0] == ("prep-shards", None)
    assert made[1] == ("prep-merge", got["shard_jobs"]) and len(got["shard_jobs"]) == 2


def test_a_prepared_cache_is_trusted_for_what_was_checked_and_that_is_said(tiny_project,
                                                                           monkeypatch, capsys):
    """`finished` for a prepare (what keeps a study from preparing again) loads the cache with
    the quick check: a large file is sampled, not read whole. It says so once, naming the
    sampled files and `data verify`; that full check still finds a flipped byte the sample
    misses; a truncated file is never finished."""
    from pixbench.config.pipeline import make_prepare_spec
    from pixbench.data import cache

    params = load_params(tiny_project)
    spec, paths = make_prepare_spec(params, gen=False), Paths()
    out = paths.cache_for(spec.profile)
    done = launch.finished("prepare", spec, paths)
    assert done["checked"] == f"{out}: every byte checked against its manifest's sha256"
    monkeypatch.setattr(cache, "FULL_HASH_MAX", 1 << 16)  # train_images.npy: sampled now
    monkeypatch.setattr(cache, "PROBE_BLOCK", 1 << 10)
    make_tiny_cache(out, n_train=4096)  # 256 KiB; its manifest's quick hash: the sampled one
    capsys.readouterr()
    for _ in range(2):
        done = launch.finished("prepare", spec, paths)
    said = capsys.readouterr().err
    assert said.count("note: ") == 1 and "a sample of 64 x 1 KiB of train_images.npy (" in said
    assert "`pixbench data verify` reads every byte" in said and done["checked"] in said
    images = out / "train_images.npy"
    size = images.stat().st_size
    assert size > 1 << 16
    step = (size - (1 << 10)) / 63
    pos = round(step / 2)  # between the first two probe blocks
    data = bytearray(images.read_bytes())
    data[pos] ^= 0xFF
    images.write_bytes(bytes(data))
    assert launch.finished("prepare", spec, paths) is not None  # the sample cannot see it
    with pytest.raises(UserError, match="sha256 does not match"):
        cache.verify_cache(out)
    images.write_bytes(bytes(data[:-1]))
    assert launch.finished("prepare", spec, paths) is None
