"""Hostile flags: every bad flag value is refused before any work, by exit code 2 and one line
on stderr naming the flag (or the file it names), with nothing written under the work dir.

Each case goes through tests/hostile.py's `assert_refused`; the exit code is also checked to be
2 (a user error: click's usage errors and pixbench's UserError alike)."""

from __future__ import annotations

import pytest
import torch

import hostile
from hostile import assert_refused

CLASSIFY = ["classify", "run", "--patch", "2"]
MAE = ["mae", "pretrain", "--patch", "2"]
DIT = ["dit", "train", "--patch", "2"]
SAMPLE = ["dit", "sample", "--patch", "2"]

# (id, project fixture, args, what the error line must name)
CASES = [
    # --device: checked before params are read, anything written or any dir discarded
    ("device-tpu", "tiny", [*CLASSIFY, "--device", "tpu"], "--device"),
    ("device-cuda-x", "tiny", [*CLASSIFY, "--device", "cuda:x"], "--device"),
    ("device-empty", "tiny", [*CLASSIFY, "--device", ""], "--device"),
    ("device-cpu-0", "tiny", [*CLASSIFY, "--device", "cpu:0"], "--device"),
    ("device-tpu-restart", "tiny", [*CLASSIFY, "--device", "tpu", "--stale", "restart"],
     "--device"),
    ("device-mps", "gen", [*DIT, "--device", "mps"], "--device"),
    # --seed: 0 <= seed < 2**31
    ("seed-float", "tiny", [*CLASSIFY, "--seed", "1e20"], "--seed"),
    ("seed-huge", "tiny", [*CLASSIFY, "--seed", str(10**20)], "--seed"),
    ("seed-negative", "tiny", [*CLASSIFY, "--seed", "-1"], "--seed"),
    ("seed-2**31", "tiny", [*CLASSIFY, "--seed", str(2**31)], "--seed"),
    ("seed-text", "tiny", [*CLASSIFY, "--seed", "abc"], "--seed"),
    ("seed-mae", "tiny", [*MAE, "--seed", "-3"], "--seed"),
    ("seed-featnet", "gen", ["featnet", "train", "--seed", "-1"], "--seed"),
    ("seed-dit", "gen", [*DIT, "--seed", "99999999999"], "--seed"),
    # --patch
    ("patch-0", "tiny", ["classify", "run", "--patch", "0"], "--patch 0"),
    ("patch-5", "tiny", ["classify", "run", "--patch", "5"], "--patch 5"),
    ("patch-negative", "tiny", ["classify", "run", "--patch", "-2"], "--patch -2"),
    ("patch-text", "tiny", ["classify", "run", "--patch", "two"], "--patch"),
    ("patch-missing", "tiny", ["classify", "run"], "--patch"),
    ("patch-mae-single-token", "tiny", ["mae", "pretrain", "--patch", "8"], "--patch 8"),
    ("patch-mae-finetune-5", "tiny", ["mae", "finetune", "--patch", "5"], "--patch 5"),
    ("patch-dit-3", "gen", ["dit", "train", "--patch", "3"], "--patch 3"),
    ("patch-dit-eval-0", "gen", ["dit", "eval", "--patch", "0"], "--patch 0"),
    # --stale, --launcher, --cluster
    ("stale-maybe", "tiny", [*CLASSIFY, "--stale", "maybe"], "--stale"),
    ("stale-mae", "tiny", [*MAE, "--stale", "RESTART"], "--stale"),
    ("launcher-foo", "tiny", [*CLASSIFY, "--launcher", "foo"], "--launcher"),
    ("launcher-prepare", "tiny", ["data", "prepare", "--launcher", "foo"], "--launcher"),
    ("launcher-sweep", "tiny", ["sweep", "--launcher", "ssh"], "--launcher"),
    ("launcher-report", "tiny", ["report", "--launcher", "k8s"], "--launcher"),
    ("cluster-traversal", "tiny", [*CLASSIFY, "--cluster", "../../etc/passwd"], "--cluster"),
    ("cluster-absolute", "tiny", [*CLASSIFY, "--cluster", "/etc/passwd"], "--cluster"),
    ("cluster-prepare", "tiny", ["data", "prepare", "--cluster", "a/b"], "--cluster"),
    ("cluster-report", "tiny", ["report", "--cluster", ".."], "--cluster"),
    ("cluster-sweep", "tiny", ["sweep", "--cluster", "../x"], "--cluster"),
    # names that become paths: --size, --variant, --target, --profile
    ("size-unknown", "tiny", [*CLASSIFY, "--size", "huge"], "--size"),
    ("size-traversal", "tiny", [*CLASSIFY, "--size", "../../x"], "--size"),
    ("size-mae-unknown", "tiny", [*MAE, "--size", "giant"], "--size"),
    ("size-dit-unknown", "gen", [*DIT, "--size", "m"], "--size"),
    ("size-dit-slash", "gen", [*DIT, "--size", "x/y"], "--size"),
    ("size-sample", "gen", [*SAMPLE, "--size", "../s"], "--size"),
    ("variant-unknown", "tiny", [*CLASSIFY, "--variant", "nope"], "--variant"),
    ("variant-traversal", "tiny", [*CLASSIFY, "--variant", "../../x"], "--variant"),
    ("variant-dot-dot", "tiny", [*CLASSIFY, "--variant", ".."], "--variant"),
    ("target-unknown", "tiny", [*MAE, "--target", "depth"], "--target"),
    ("target-traversal", "tiny", [*MAE, "--target", "../x"], "--target"),
    ("target-finetune", "tiny", ["mae", "finetune", "--patch", "2", "--target", "a b"],
     "--target"),
    ("profile-unknown", "tiny", [*CLASSIFY, "--profile", "other"], "--profile"),
    ("profile-traversal", "tiny", [*CLASSIFY, "--profile", "../tiny"], "--profile"),
    ("profile-absolute", "tiny", [*CLASSIFY, "--profile", "/tmp"], "--profile"),
    ("profile-html", "tiny", ["report", "--profile", "<script>"], "--profile"),
    ("profile-params-show", "tiny", ["params", "show", "--profile", "a/../b"], "--profile"),
    # --params
    ("params-missing", "tiny", [*CLASSIFY, "--params", "missing.yaml"], "missing.yaml"),
    ("params-directory", "tiny", [*CLASSIFY, "--params", "data"], "data"),
    # counts and threads
    ("sample-n-0", "gen", [*SAMPLE, "-n", "0"], "-n"),
    ("sample-n-negative", "gen", [*SAMPLE, "-n", "-5"], "-n"),
    ("sample-out-dir", "gen", [*SAMPLE, "--out", "data"], "--out"),
    ("sample-out-jpg", "gen", [*SAMPLE, "--out", "grid.jpg"], "--out"),
    # the benchmark suite's flags (`make bench`, no pixbench command): tests/test_tooling.py
    # the parser's own errors: one line too
    ("unknown-option", "tiny", [*CLASSIFY, "--bogus"], "--bogus"),
    ("unknown-command", "tiny", ["train"], "train"),
    ("extra-argument", "tiny", [*CLASSIFY, "--wait", "maybe"], "maybe"),
    ("track-unknown", "tiny", ["params", "show", "--track", "nope"], "--track"),
    ("no-gen-track", "tiny", ["vq", "train"], "gen"),
]


@pytest.fixture
def project(request, tmp_path):
    """The project named by the case: the tiny classification one or the generation one."""
    return request.getfixturevalue("tiny_project" if request.param == "tiny" else "gen_project")


@pytest.fixture
def codes(monkeypatch):
    """Exit codes of the CLI calls made through the harness."""
    seen: list[int] = []

    def recording(args, mp, capsys):
        out = real(args, mp, capsys)
        seen.append(out[0])
        return out

    real = hostile.run_cli
    monkeypatch.setattr(hostile, "run_cli", recording)
    return seen


@pytest.mark.parametrize("project, args, names", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES], indirect=["project"])
def test_bad_flag_is_refused(project, args, names, codes, monkeypatch, capsys):
    line = assert_refused(args, names, project.parent, monkeypatch, capsys)
    assert codes == [2], line
    assert line.startswith("error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_before_writing(tiny_project, codes, monkeypatch, capsys):
    assert_refused([*CLASSIFY, "--device", "cuda"], "--device cuda", tiny_project.parent,
                   monkeypatch, capsys)
    assert codes == [2]


def test_no_args_prints_help_not_an_error(monkeypatch, capsys):
    code, out, err = hostile.run_cli(["vq"], monkeypatch, capsys)
    assert code == 2 and "Usage: pixbench vq" in out + err and "error:" not in out + err


def test_seed_bounds_are_inclusive_below_2_31(tiny_project, monkeypatch):
    """The largest seed is accepted by the flag and by the spec (the run itself is not started)."""
    from pixbench.config import load_params, make_classify_spec

    spec = make_classify_spec(load_params(tiny_project), size=None, patch=2, seed=2**31 - 1)
    assert spec.run_id.endswith(f"-s{2**31 - 1}")
