"""Hostile run dirs, report dirs and inputs (issue 27): nothing is written out of its root
through a symbolic link, unwritable dirs and broken inputs are one line (no traceback), and a
refused run leaves its run dir as it was.

Most cases go through tests/hostile.py's `assert_refused` (exit != 0, one `error:` line naming
the file or field, no traceback, nothing under the work dir changed). The work dir's `outside/`
stands for a place outside the runs/reports/cache roots: it must stay as it was. A root test process
cannot be denied a write by permissions, so an unwritable dir is simulated (`deny_writes`)."""

from __future__ import annotations

import builtins
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hostile import assert_refused, run_cli
from pixbench.errors import UserError

RUN = ["classify", "run", "--patch", "2", "--device", "cpu"]


def classify_spec(params_path: Path, patch: int = 2):
    from pixbench.config import load_params, make_classify_spec

    return make_classify_spec(load_params(params_path), size=None, patch=patch, seed=0)


def run_dir_of(work: Path, spec) -> Path:
    return work / "runs" / spec.profile / spec.run_id


def write_spec(run_dir: Path, spec) -> None:
    """spec.json as the runner writes it: a run dir of this very spec."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps({"digest": spec.digest(),
                                                   "spec": spec.canonical()}))


def finished(run_dir: Path, spec, top1: float = 50.0) -> dict:
    """A finished run dir of `spec` (spec.json + metrics.json)."""
    write_spec(run_dir, spec)
    metrics = {"run_id": spec.run_id, "top1": top1, "spec_digest": spec.digest()}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return metrics


@pytest.fixture
def outside(workdir: Path) -> Path:
    """A directory outside every root (runs, reports, data): nothing may land in it."""
    d = workdir / "outside"
    d.mkdir()
    return d


@pytest.fixture
def vq_trained(gen_project):
    """A trained tokenizer (the VQ stage) of the tiny gen project."""
    from pixbench.config import Paths, load_params, make_vq_spec
    from pixbench.tasks.gen import vq

    vq.run(make_vq_spec(load_params(gen_project)), Paths(), progress=False)
    return gen_project


def deny_writes(mp, *dirs: Path) -> None:
    """Every write below `dirs` fails with EACCES, as in a directory without write permission:
    os.open with a write flag, mkdir, rename/replace (either end), open() for writing."""
    roots = [os.path.realpath(d) for d in dirs]

    def guard(owner, name: str, writes=lambda *a, **k: True, ends: int = 1) -> None:
        real = getattr(owner, name)

        def fake(*args, **kwargs):
            paths = [os.path.realpath(os.fspath(p)) for p in args[:ends]
                     if isinstance(p, (str, os.PathLike))]
            if writes(*args, **kwargs) and any(
                    p == r or p.startswith(r + os.sep) for p in paths for r in roots):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), paths[-1])
            return real(*args, **kwargs)
        mp.setattr(owner, name, fake)

    guard(os, "open", lambda path, flags, *a, **k: flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    guard(os, "mkdir")
    guard(os, "replace", ends=2)
    guard(os, "rename", ends=2)
    guard(builtins, "open", lambda file, mode="r", *a, **k: bool(set(mode) & set("wax+")))


# ------------------------------------------------------------ no write leaves its root


@pytest.mark.parametrize("name", ["ckpt", "ckpt/last.pt", "spec.json", "manifest.json",
                                  "curve.json", "dvclive"])
def test_run_refuses_a_run_file_linked_outside(name, tiny_project, outside, monkeypatch, capsys):
    """Every file and dir a classify run writes in its run dir, planted as a link out of the
    runs root (the issue's case: ckpt/ -> outside received last.pt): refused before the run
    reads or writes anything, the place outside untouched."""
    spec = classify_spec(tiny_project)
    run_dir = run_dir_of(tiny_project.parent, spec)
    (run_dir / name).parent.mkdir(parents=True)
    target = outside / "target"
    keep = json.dumps({"digest": spec.digest(), "spec": spec.canonical()})  # one it would use
    if name in ("ckpt", "dvclive"):
        target.mkdir()
    else:
        target.write_text(keep)
    (run_dir / name).symlink_to(target)
    assert_refused(RUN, name, tiny_project.parent, monkeypatch, capsys)
    assert [p.name for p in outside.rglob("*")] == ["target"]
    assert target.is_dir() or target.read_text() == keep


def test_reuse_refuses_a_metrics_json_linked_outside(tiny_project, outside, monkeypatch, capsys):
    """The issue's case: a finished cell's metrics.json -> a file outside was followed (read,
    re-published to reports/metrics) when the cell was reused."""
    spec = classify_spec(tiny_project)
    run_dir = run_dir_of(tiny_project.parent, spec)
    metrics = finished(run_dir, spec)
    (run_dir / "metrics.json").unlink()
    (outside / "metrics.json").write_text(json.dumps({**metrics, "top1": 99.9}))
    (run_dir / "metrics.json").symlink_to(outside / "metrics.json")
    assert_refused(RUN, "metrics.json", tiny_project.parent, monkeypatch, capsys)


def test_run_refuses_a_lock_file_linked_outside(tiny_project, outside, monkeypatch, capsys):
    """The run-dir lock beside the run dir: opening it must not follow a link (it truncates and
    writes the holder's pid)."""
    spec = classify_spec(tiny_project)
    victim = outside / "victim.txt"
    victim.write_text("keep me\n")
    (tiny_project.parent / "runs" / "tiny").mkdir(parents=True)
    (tiny_project.parent / "runs" / "tiny" / f".{spec.run_id}.lock").symlink_to(victim)
    assert_refused(RUN, f".{spec.run_id}.lock", tiny_project.parent, monkeypatch, capsys)
    assert victim.read_text() == "keep me\n"


@pytest.mark.parametrize("kind", ["metrics", "curves"])
def test_publish_refuses_a_reports_dir_linked_outside(kind, tiny_project, outside, monkeypatch,
                                                      capsys):
    """A finished cell re-publishes reports/{metrics,curves}/<profile>/<run_id>.json: the
    profile dir linked outside the reports root is refused."""
    spec = classify_spec(tiny_project)
    run_dir = run_dir_of(tiny_project.parent, spec)
    finished(run_dir, spec)
    (run_dir / "curve.json").write_text(json.dumps([{"step": 1, "train_loss": 1.0}]))
    (tiny_project.parent / "reports" / kind).mkdir(parents=True)
    (tiny_project.parent / "reports" / kind / "tiny").symlink_to(outside)
    assert_refused(RUN, f"reports/{kind}/tiny", tiny_project.parent, monkeypatch, capsys)
    assert not any(outside.iterdir())


def test_report_refuses_a_figure_dir_linked_outside(workdir, tiny_params, outside, monkeypatch,
                                                    capsys):
    from conftest import write_params
    from pixbench.config import load_params
    from test_report import _fixture_run

    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    for patch in (1, 4):
        _fixture_run(workdir / "runs" / "tiny", patch, 0, 60.0 + patch, params=params)
    (workdir / "reports").mkdir()
    (workdir / "reports" / "figures").symlink_to(outside)
    assert_refused(["report"], "figures", workdir, monkeypatch, capsys)
    assert not any(outside.iterdir())


def test_verify_results_refuse_a_dir_linked_outside(workdir, outside):
    """verify writes reports/verify/<profile>.json and <profile>.counts.json through the
    shared atomic writer: below the reports root, no link out of it is followed."""
    from pixbench.config import Paths
    from pixbench.verify import _write

    (workdir / "reports").mkdir(parents=True)
    for link in ("verify",):
        (workdir / "reports" / link).symlink_to(outside)
        with pytest.raises(UserError, match=f"reports/{link}"):
            _write(Paths(), "tiny", {"reproduced": 1, "cells": 1})
        (workdir / "reports" / link).unlink()
    assert not any(outside.iterdir())


def test_prepare_refuses_a_cache_linked_outside(workdir, tiny_params, outside, monkeypatch,
                                                capsys):
    from conftest import write_params

    write_params(workdir / "params.yaml", tiny_params)
    (workdir / "data").mkdir()
    (workdir / "data" / "tiny").symlink_to(outside)
    assert_refused(["data", "prepare"], "data/tiny", workdir, monkeypatch, capsys)
    assert not any(outside.iterdir())


def test_atomic_write_stays_in_its_root(workdir, outside):
    """The writer itself: a parent linked out of `root` is refused before any mkdir or temp
    file; a link at the file's own name is replaced, never written through; inside the root
    (also through a link that stays inside) writes land where the path says."""
    from pixbench.runio import atomic_write_bytes, atomic_write_json, save_checkpoint

    root = workdir / "runs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "ckpt").symlink_to(outside)
    for write in (lambda p: atomic_write_bytes(p, b"x", root=root),
                  lambda p: atomic_write_json(p, {}, root=root),
                  lambda p: save_checkpoint(p, {"w": torch.zeros(1)}, root=root)):
        with pytest.raises(UserError, match="a/ckpt"):
            write(root / "a" / "ckpt" / "new" / "last.pt")
    assert not any(outside.iterdir())
    (outside / "victim").write_text("keep")
    (root / "a" / "metrics.json").symlink_to(outside / "victim")
    atomic_write_json(root / "a" / "metrics.json", {"top1": 1}, root=root)
    assert (outside / "victim").read_text() == "keep"
    assert not (root / "a" / "metrics.json").is_symlink()
    (root / "b").mkdir()
    (root / "a" / "inside").symlink_to(root / "b")
    atomic_write_bytes(root / "a" / "inside" / "f", b"y", root=root)
    assert (root / "b" / "f").read_bytes() == b"y"


# ------------------------------------------------------------ one line, not a traceback


@pytest.mark.parametrize("args, denied, names, finished_cell", [
    (RUN, "runs", "runs/tiny", False),  # the lock's dir runs/<profile> cannot be made
    (RUN, "reports", "reports/metrics/tiny", True),  # a reused cell's DVC-facing copies
    (["report"], "reports", "reports", False)])
def test_unwritable_dir_is_one_line(args, denied, names, finished_cell, tiny_project,
                                    monkeypatch, capsys):
    spec = classify_spec(tiny_project)
    if finished_cell:
        finished(run_dir_of(tiny_project.parent, spec), spec)
    deny_writes(monkeypatch, tiny_project.parent / denied)
    assert_refused(args, names, tiny_project.parent, monkeypatch, capsys)


def test_unwritable_run_dir_is_one_line(tiny_project, monkeypatch, capsys):
    """The run dir itself cannot be made (runs/<profile> can: the lock is taken there)."""
    spec = classify_spec(tiny_project)
    deny_writes(monkeypatch, run_dir_of(tiny_project.parent, spec))
    code, _, err = run_cli(RUN, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert spec.run_id in err and "Permission denied" in err, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_read_only_runs_dir_is_one_line(tiny_project, monkeypatch, capsys):
    runs = tiny_project.parent / "runs"
    runs.mkdir()
    runs.chmod(0o555)
    try:
        assert_refused(RUN, "runs/tiny", tiny_project.parent, monkeypatch, capsys)
    finally:
        runs.chmod(0o755)


def test_corrupt_metrics_json_in_report(workdir, tiny_params, monkeypatch, capsys):
    from conftest import write_params
    from pixbench.config import load_params
    from test_report import _fixture_run

    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    _fixture_run(workdir / "runs" / "tiny", 2, 0, 60.0, params=params)
    bad = workdir / "runs" / "tiny" / "classify-xxs-p2-s0" / "metrics.json"
    bad.write_text('{"top1": 6')
    assert_refused(["report"], "classify-xxs-p2-s0/metrics.json", workdir, monkeypatch, capsys)


def test_latents_manifest_without_scale_factor(vq_trained, monkeypatch, capsys):
    """Real latents (vq encode) whose manifest lost `scale_factor`: `dit train` names it."""
    from pixbench.config import Paths, load_params, make_encode_spec
    from pixbench.tasks.gen import latents

    man = latents.run_encode(make_encode_spec(load_params(vq_trained)), Paths(), progress=False)
    path = latents.latents_dir(Paths(), "tiny", man["tokenizer"]) / latents.LATENTS_MANIFEST
    man = json.loads(path.read_text())
    del man["scale_factor"]
    path.write_text(json.dumps(man))
    assert_refused(["dit", "train", "--patch", "2", "--device", "cpu"],
                   "latents.json: latents manifest without a valid scale_factor",
                   vq_trained.parent, monkeypatch, capsys)


@pytest.mark.parametrize("ratio, patch, sweep", [(0.9, 4, None), (0.95, 2, None),
                                                  (0.9, 4, [1, 2])])
def test_mask_ratio_leaving_no_visible_token(tiny_project, ratio, patch, sweep, monkeypatch,
                                             capsys):
    """image 8x8: patch 4 gives 4 tokens (0.9 keeps int(0.4) = 0), patch 2 gives 16 (0.95
    keeps int(0.8) = 0): refused when params.yaml is read, naming the field, or (a --patch
    the MAE sweep does not run) when the spec is made. The fixture's 0.75 keeps exactly one
    token at patch 4, the boundary every other test loads."""
    raw = yaml.safe_load(tiny_project.read_text())
    raw["profiles"]["tiny"]["mae"]["pretrain"]["mask_ratio"] = ratio
    if sweep:
        raw["mae_sweep"].update(patches=sweep, alt_patches=[2])
    tiny_project.write_text(yaml.safe_dump(raw))
    line = assert_refused(["mae", "pretrain", "--patch", str(patch), "--device", "cpu"],
                          "profiles.tiny.mae.pretrain.mask_ratio", tiny_project.parent,
                          monkeypatch, capsys)
    assert "no visible token" in line and str(patch) in line, line


def _dit_eval_row(gen_project: Path, images: np.ndarray) -> Path:
    """A finished dit-eval cell of the current params whose samples.npz holds `images`."""
    from pixbench.config import load_params, make_dit_eval_spec

    params = load_params(gen_project)
    spec = make_dit_eval_spec(params, size=None, patch=2, seed=0)
    d = gen_project.parent / "runs" / "tiny" / spec.run_id
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "run_id": spec.run_id, "size": "xxs", "patch": 2, "seed": 0, "display": "DiT-XXS/2",
        "tokens": 4, "fid_featnet": 100.0, "gflops_per_step": 0.01, "train_s": 1.0,
        "sample_img_per_s": 10.0, "spec_digest": spec.digest()}))
    np.savez(d / "samples.npz", images=images, labels=np.arange(len(images)) % 4)
    return d / "samples.npz"


def test_samples_npz_with_an_object_array_in_report(gen_project, monkeypatch, capsys):
    images = np.empty(8, dtype=object)
    images[:] = [np.zeros((1, 16, 16), np.uint8)] * 8
    path = _dit_eval_row(gen_project, images)
    assert_refused(["report"], str(path.relative_to(gen_project.parent)), gen_project.parent,
                   monkeypatch, capsys)


# ------------------------------------------------------------ refusals write nothing


def _ckpt_case(tiny_project: Path, kind: str) -> Path:
    """A resumable run dir of this spec (spec.json) whose ckpt/last.pt is truncated, was
    written for another spec, or is some other torch file."""
    spec = classify_spec(tiny_project)
    run_dir = run_dir_of(tiny_project.parent, spec)
    write_spec(run_dir, spec)
    ckpt = run_dir / "ckpt" / "last.pt"
    ckpt.parent.mkdir()
    torch.save({"w": torch.zeros(3)} if kind == "not-pixbench" else
               {"modules": {}, "state": {}, "spec_digest": "0" * 16, "spec": {}}, ckpt)
    if kind == "truncated":
        os.truncate(ckpt, ckpt.stat().st_size // 2)
    return ckpt


@pytest.mark.parametrize("kind, advice", [("truncated", "to start the run over"),
                                          ("another-spec", "pass --stale restart"),
                                          ("not-pixbench", "pass --stale restart")])
def test_bad_checkpoint_refused_before_any_write(kind, advice, tiny_project, monkeypatch,
                                                 capsys):
    """Refused before spec.json/manifest.json are rewritten or the lock file is made."""
    _ckpt_case(tiny_project, kind)
    line = assert_refused(RUN, "ckpt/last.pt", tiny_project.parent, monkeypatch, capsys)
    assert advice in line, line


def test_truncated_checkpoint_is_refused_under_stale_restart_too(tiny_project, monkeypatch,
                                                                 capsys):
    """Damage is not staleness: --stale restart does not delete it, and the refusal does not
    advise the flag it was given."""
    _ckpt_case(tiny_project, "truncated")
    line = assert_refused([*RUN, "--stale", "restart"], "ckpt/last.pt", tiny_project.parent,
                          monkeypatch, capsys)
    assert "--stale restart" not in line, line


@pytest.mark.parametrize("kind", ["another-spec", "not-pixbench"])
def test_foreign_checkpoint_discarded_under_stale_restart(kind, tiny_project, monkeypatch,
                                                          capsys):
    """The issue's case: --stale restart discards what the advice says it discards, and the
    run starts over (it used to fail with the advice to pass --stale restart)."""
    ckpt = _ckpt_case(tiny_project, kind)
    code, out, err = run_cli([*RUN, "--stale", "restart"], monkeypatch, capsys)
    assert code == 0, err
    assert "top1" in out
    state = torch.load(ckpt, weights_only=True)
    assert state["spec_digest"] == classify_spec(tiny_project).digest()


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_bad_featnet_refused_before_vq_eval_writes(kind, vq_trained, monkeypatch, capsys):
    """The FID classifier's run dir has its spec.json but no (or garbage) weights: `vq eval`
    is refused before it creates or describes its run dir."""
    from pixbench.config import load_params, make_featnet_spec
    from pixbench.tasks.gen.featnet import WEIGHTS_FILE

    spec = make_featnet_spec(load_params(vq_trained))
    d = vq_trained.parent / "runs" / "tiny" / spec.run_id
    write_spec(d, spec)
    if kind == "corrupt":
        (d / WEIGHTS_FILE).write_bytes(b"not a checkpoint")
    assert_refused(["vq", "eval", "--device", "cpu"], f"{spec.run_id}/{WEIGHTS_FILE}",
                   vq_trained.parent, monkeypatch, capsys)

