"""Nothing lost, nothing escapes: real signals on real `pixbench` processes, and divergence.

Kill chains: an uninterrupted run (in-process, one thread, the run dir then kept as
`<run dir>.full`); then the same command as a subprocess, SIGKILLed at three growing steps
(each a moment after a checkpoint was observed, so steps and curve rows after the checkpoint
are lost), then SIGTERMed (exit 143, one line "checkpointed at step N ... resume"), then resumed
to the end. The chains are `slow` (4 CLI starts each); classify's SIGTERM alone is not. Weights, metrics and curve.json (minus time fields), the checkpoint's State and the
dvclive logs end identical to the uninterrupted run's.

Divergence: lr 1e4 without clipping ends with a non-zero exit code and one `error:` line naming
the step and the last good checkpoint, which is bitwise the last one written; no metrics.json
and no NaN anywhere.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ckpt_util import tensors
import torch
import yaml

from hostile import run_cli
from pixbench.config import (Paths, load_params, make_classify_spec, make_dit_spec,
                             make_pretrain_spec, make_vq_spec)
from pixbench.runio import CKPT_NAME

CLI = [sys.executable, "-m", "pixbench.cli"]
STOPPED = re.compile(r"error: (\S+): SIGTERM: checkpointed at step (\d+) \((\S+)\); run the "
                     r"same command to resume$")


# ------------------------------------------------------------------------------ helpers


def untimed(obj):
    """Without wall-clock fields (`*_s`, `*_per_s`) and memory probes (`*_mb`)."""
    if isinstance(obj, list):
        return [untimed(o) for o in obj]
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items()
                if not (k.endswith(("_s", "_mb")) or "per_s" in k)}
    return obj


def ckpt_step(path: Path) -> int | None:
    try:
        return torch.load(path, weights_only=True)["state"]["global_step"]
    except Exception:  # not there yet, or being replaced right now
        return None


def edit_params(path: Path, section: list[str], **values) -> None:
    raw = yaml.safe_load(path.read_text())
    node = raw["profiles"]["tiny"]
    for key in section:
        node = node[key]
    node.update(values)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # PIXBENCH_* as the fixtures set them
    with open(log, "w") as err:
        return subprocess.Popen(CLI + cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)


def wait_for_step(proc: subprocess.Popen, ckpt: Path, k: int, log: Path,
                  timeout_s: float = 180) -> int:
    """Poll the checkpoint until its step is >= k; the process must still be running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        step = ckpt_step(ckpt)
        if step is not None and step >= k:
            return step
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before step {k}: {log.read_text()[-800:]}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"no checkpoint at step >= {k} in {timeout_s} s")


def sigkill_after(cmd: list[str], ckpt: Path, k: int, log: Path, delay_s: float) -> int:
    """SIGKILL `delay_s` after a checkpoint at step >= k; returns the checkpoint's step after."""
    proc = start(cmd, log)
    wait_for_step(proc, ckpt, k, log)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not ckpt.parent.parent.joinpath("metrics.json").exists(), "finished before the kill"
    assert not any(p.name.endswith(".tmp") for p in ckpt.parent.iterdir())
    return ckpt_step(ckpt)


def sigterm_after(cmd: list[str], ckpt: Path, k: int, log: Path, probe=None) -> dict:
    """SIGTERM a run past step k, frozen (SIGSTOP) meanwhile so `probe()` reads the step it had
    done when the signal came. It must exit 143 with one line naming the checkpoint's step."""
    proc = start(cmd, log)
    wait_for_step(proc, ckpt, k, log)
    proc.send_signal(signal.SIGSTOP)
    done = probe() if probe is not None else ckpt_step(ckpt)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)
    rc = proc.wait(timeout=120)
    latency = time.monotonic() - t0
    lines = log.read_text().strip().splitlines()
    assert rc == 128 + signal.SIGTERM, log.read_text()[-800:]
    assert "Traceback" not in log.read_text()
    match = STOPPED.match(lines[-1])
    assert match, lines[-1]
    step = int(match[2])
    assert Path(match[3]) == ckpt and ckpt_step(ckpt) == step
    assert not ckpt.parent.parent.joinpath("metrics.json").exists()
    return {"done_at_signal": done, "checkpointed": step, "latency_s": latency}


def interrupted(cmd: list[str], ckpt: Path, kills: list[int], term_at: int, tmp: Path,
                delay_s: float = 0.15, probe=None) -> dict:
    """SIGKILLs at growing steps (`kills`), then a SIGTERM: what the run went through."""
    t0 = time.monotonic()
    steps = [sigkill_after(cmd, ckpt, k, tmp / f"kill{i}.err", delay_s)
             for i, k in enumerate(kills)]
    t1 = time.monotonic()
    term = sigterm_after(cmd, ckpt, term_at, tmp / "term.err", probe)
    print(f"{cmd[:2]}: SIGKILL checkpoints at {steps} ({t1 - t0:.1f} s), SIGTERM {term} "
          f"({time.monotonic() - t1:.1f} s)")
    return term


def keep_full(run_dir: Path) -> Path:
    full = run_dir.with_name(run_dir.name + ".full")
    run_dir.rename(full)
    return full


def in_process(fn, *args, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): same reduction order
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def assert_same_run(full: Path, got: Path, files: tuple[str, ...] = ()) -> None:
    """Metrics and curve (minus time fields), the checkpoint (weights, optimiser, State minus
    time fields), the named output files and every dvclive file are identical."""
    for name in ("metrics.json", "curve.json"):
        a, b = (json.loads((d / name).read_text()) for d in (full, got))
        assert untimed(a) == untimed(b), name
    a, b = (torch.load(d / CKPT_NAME, weights_only=True) for d in (full, got))
    assert untimed(a["state"]) == untimed(b["state"])
    pairs = list(zip(tensors(a["modules"]), tensors(b["modules"])))
    assert pairs and all(torch.equal(x, y) for x, y in pairs)
    for name in files:
        assert (full / name).read_bytes() == (got / name).read_bytes(), name
    live = sorted(p.relative_to(full) for p in (full / "dvclive").rglob("*") if p.is_file())
    assert live == sorted(p.relative_to(got) for p in (got / "dvclive").rglob("*")
                          if p.is_file())
    for rel in live:
        assert (full / rel).read_bytes() == (got / rel).read_bytes(), rel


# ------------------------------------------------------------------------- kill chains


@pytest.mark.parametrize("kills", [pytest.param([], id="sigterm"),
                                   pytest.param([6, 18, 28], id="3xsigkill-sigterm",
                                                marks=pytest.mark.slow)])
def test_classify_interrupted_resumes_identically(kills, tiny_project, tmp_path):
    """48 steps, a curve row (and a dvclive step) after every step, a checkpoint every 0.2 s.
    The SIGTERM lands on a frozen process whose dvclive log says how many steps it had done:
    the checkpoint holds all of them (plus at most the step in flight)."""
    from pixbench.tasks.classify import run as classify

    edit_params(tiny_project, ["classify"], epochs=6, checkpoint_every_s=0.2, curve_every_steps=1)
    spec = make_classify_spec(load_params(tiny_project), size=None, patch=2, seed=0)
    run_dir = Paths().run_dir("tiny", spec.run_id)
    in_process(classify.run, spec, Paths(), progress=False)
    full = keep_full(run_dir)
    loss_tsv = run_dir / "dvclive/plots/metrics/train/loss.tsv"

    def steps_logged() -> int:  # one dvclive row per step; a row cut short is not a step
        rows = [r for r in loss_tsv.read_text().splitlines(keepends=True)[1:] if r.endswith("\n")]
        return len(rows)

    cmd = ["classify", "run", "--patch", "2", "--seed", "0"]
    term = interrupted(cmd, run_dir / CKPT_NAME, kills, 36, tmp_path, probe=steps_logged)
    assert term["done_at_signal"] <= term["checkpointed"] <= term["done_at_signal"] + 1
    in_process(classify.run, spec, Paths(), progress=False)
    assert_same_run(full, run_dir)


@pytest.mark.slow
def test_mae_pretrain_sigkill_thrice_then_sigterm_resumes_identically(tiny_project, tmp_path):
    from pixbench.tasks.mae import run as mae

    edit_params(tiny_project, ["mae", "pretrain"], epochs=8, checkpoint_every_s=0.1)
    spec = make_pretrain_spec(load_params(tiny_project), size=None, patch=2, seed=0)
    run_dir = Paths().run_dir("tiny", spec.run_id)
    in_process(mae.run, spec, Paths(), progress=False)
    full = keep_full(run_dir)
    cmd = ["mae", "pretrain", "--patch", "2", "--seed", "0"]
    interrupted(cmd, run_dir / CKPT_NAME, [8, 24, 40], 52, tmp_path, delay_s=0.1)
    in_process(mae.run, spec, Paths(), progress=False)
    assert_same_run(full, run_dir, files=("encoder.pt", "reconstructions.npz"))


@pytest.mark.slow
def test_vq_sigkill_thrice_then_sigterm_resumes_identically(gen_project, tmp_path):
    from pixbench.tasks.gen import vq

    edit_params(gen_project, ["gen", "vq"], steps=120, checkpoint_every_s=0.1)
    spec = make_vq_spec(load_params(gen_project))
    run_dir = Paths().run_dir("tiny", spec.run_id)
    in_process(vq.run, spec, Paths(), progress=False)
    full = keep_full(run_dir)
    interrupted(["vq", "train"], run_dir / CKPT_NAME, [15, 45, 70], 95, tmp_path, delay_s=0.1)
    in_process(vq.run, spec, Paths(), progress=False)
    assert_same_run(full, run_dir, files=("tokenizer/diffusion_pytorch_model.safetensors",))


@pytest.mark.slow
def test_dit_sigkill_thrice_then_sigterm_resumes_identically(gen_project, tmp_path):
    from pixbench.config import make_encode_spec, make_featnet_spec
    from pixbench.tasks.gen import dit, featnet, latents, vq

    params = load_params(gen_project)
    for fn, spec in ((vq.run, make_vq_spec(params)), (latents.run_encode, make_encode_spec(params)),
                     (featnet.run, make_featnet_spec(params))):
        fn(spec, Paths(), progress=False)
    edit_params(gen_project, ["gen", "dit"], steps=80, curve_every_steps=20, checkpoint_every_s=0.1)
    spec = make_dit_spec(load_params(gen_project), size=None, patch=2, seed=0)
    run_dir = Paths().run_dir("tiny", spec.run_id)
    in_process(dit.run, spec, Paths(), progress=False)
    full = keep_full(run_dir)
    cmd = ["dit", "train", "--patch", "2", "--seed", "0"]
    interrupted(cmd, run_dir / CKPT_NAME, [10, 30, 45], 62, tmp_path, delay_s=0.1)
    in_process(dit.run, spec, Paths(), progress=False)
    assert_same_run(full, run_dir, files=("ema.pt",))


# --------------------------------------------------------------------------- divergence

DIVERGED = re.compile(r"^error: (\S+): training diverged: non-finite (loss|\S+ state) at step "
                      r"(\d+); last good checkpoint: (\S+) \(step (\d+)\), kept$")


def assert_diverged(args: list[str], run_dir: Path, monkeypatch, capsys) -> re.Match:
    """Run `pixbench ARGS` in-process, recording every checkpoint write. It must fail with one
    `error:` line naming the step and the last good checkpoint, which is bitwise the last one
    written (all finite); no metrics.json, no NaN in any file of the run dir or the reports."""
    from pixbench.tasks import runner

    ckpt, writes, real = run_dir / CKPT_NAME, [], runner.save_checkpoint

    def recording(path, obj):
        real(path, obj)
        if Path(path) == ckpt:
            writes.append(ckpt.read_bytes())

    monkeypatch.setattr(runner, "save_checkpoint", recording)
    capsys.readouterr()  # what earlier in-process runs printed is not this command's
    code, _, err = run_cli(args, monkeypatch, capsys)
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code != 0 and "Traceback" not in err and len(errors) == 1, err
    match = DIVERGED.match(errors[0])
    assert match and errors[0] == err.strip().splitlines()[-1], err
    assert Path(match[4]) == ckpt and int(match[5]) < int(match[3])
    assert writes and ckpt.read_bytes() == writes[-1]  # untouched since the last good write
    last = torch.load(ckpt, weights_only=True)
    assert last["state"]["global_step"] == int(match[5])
    assert all(bool(torch.isfinite(t).all()) for t in tensors(last) if t.is_floating_point())
    assert not (run_dir / "metrics.json").exists()
    for path in [*run_dir.rglob("*"), *Path("reports").rglob("*")]:
        if path.suffix in (".json", ".tsv"):
            assert not re.search(r"\b(nan|-?inf(inity)?)\b", path.read_text(), re.I), path
    return match


def test_classify_divergence_keeps_the_last_good_checkpoint(tiny_project, monkeypatch, capsys):
    edit_params(tiny_project, ["classify"], checkpoint_every_s=1e-6, curve_every_steps=2)
    edit_params(tiny_project, ["classify", "optim"], lr=1e4, grad_clip=None)
    run_dir = Paths().run_dir("tiny", "classify-xxs-p4-s0")
    assert_diverged(["classify", "run", "--patch", "4"], run_dir, monkeypatch, capsys)
    assert not (run_dir / "dvclive" / "metrics.json").exists() or "nan" not in \
        (run_dir / "dvclive" / "metrics.json").read_text().lower()


def test_mae_pretrain_divergence_keeps_the_last_good_checkpoint(tiny_project, monkeypatch,
                                                                capsys):
    edit_params(tiny_project, ["mae", "pretrain"], checkpoint_every_s=1e-6)
    edit_params(tiny_project, ["mae", "pretrain", "optim"], lr=1e4, grad_clip=None)
    run_dir = Paths().run_dir("tiny", "mae-pretrain-xxs-p4-s0")
    assert_diverged(["mae", "pretrain", "--patch", "4"], run_dir, monkeypatch, capsys)
    assert not (run_dir / "encoder.pt").exists()


def test_vq_divergence_keeps_the_last_good_checkpoint(gen_project, monkeypatch, capsys):
    edit_params(gen_project, ["gen", "vq"], checkpoint_every_s=1e-6, lr=1e4)
    run_dir = Paths().run_dir("tiny", "vq-s0")
    assert_diverged(["vq", "train"], run_dir, monkeypatch, capsys)
    assert not (run_dir / "tokenizer").exists()


def test_featnet_divergence_keeps_the_last_good_checkpoint(gen_project, monkeypatch, capsys):
    edit_params(gen_project, ["gen", "featnet"], epochs=2, lr=1e4)
    monkeypatch.setattr("pixbench.tasks.gen.featnet.CHECKPOINT_EVERY_S", 0.0)
    run_dir = Paths().run_dir("tiny", "featnet-s0")
    assert_diverged(["featnet", "train"], run_dir, monkeypatch, capsys)
    assert not (run_dir / "featnet.pt").exists()


def test_dit_divergence_keeps_the_last_good_checkpoint(gen_project, monkeypatch, capsys):
    from pixbench.config import make_encode_spec
    from pixbench.tasks.gen import latents, vq

    params = load_params(gen_project)
    vq.run(make_vq_spec(params), Paths(), progress=False)
    latents.run_encode(make_encode_spec(params), Paths(), progress=False)
    edit_params(gen_project, ["gen", "dit"], checkpoint_every_s=1e-6, curve_every_steps=None,
                steps=30)
    edit_params(gen_project, ["gen", "dit", "optim"], lr=1e4, grad_clip=None)
    run_dir = Paths().run_dir("tiny", "dit-xxs-p2-s0")
    assert_diverged(["dit", "train", "--patch", "2"], run_dir, monkeypatch, capsys)
    assert not (run_dir / "ema.pt").exists()


# ------------------------------------------------------------------------------ dvclive


def test_dvclive_logs_are_cut_to_the_checkpointed_rows(tmp_path):
    """Rows past the checkpoint, a row cut short by a kill and a summary cut short are mended:
    the TSVs keep the checkpoint's rows, the summary is rebuilt from them, and a resumed Live
    logs on from there as an uninterrupted one."""
    from pixbench.tasks.livelog import open_live

    def log(live, rows):
        for r in rows:
            live.step = r
            live.log_metric("train/loss", r / 10)
            live.log_metric("val/top1", 100.0 - r)
            live.next_step()

    full = open_live(tmp_path / "full", 0, resume=False)
    log(full, range(6))
    full.end()
    cut = open_live(tmp_path / "cut", 0, resume=False)
    log(cut, range(5))  # the checkpoint knows 3 rows; 4 and 5 were logged after it
    loss = tmp_path / "cut/plots/metrics/train/loss.tsv"
    loss.write_text(loss.read_text() + "5\t0.")  # killed mid-row
    (tmp_path / "cut/metrics.json").write_text('{"train": {"lo')  # killed mid-summary
    resumed = open_live(tmp_path / "cut", 3, resume=True)
    assert loss.read_text().splitlines()[1:] == ["0\t0.0", "1\t0.1", "2\t0.2"]
    log(resumed, range(3, 6))
    resumed.end()
    for rel in ("plots/metrics/train/loss.tsv", "plots/metrics/val/top1.tsv", "metrics.json"):
        assert (tmp_path / "full" / rel).read_bytes() == (tmp_path / "cut" / rel).read_bytes(), rel


# ------------------------------------------------------------------------ data parallel


def _ddp_worker(rank: int, port: int, params_path: str, env: dict, out: str) -> None:
    """One gloo rank of a classify run; rank 1 alone gets SIGTERM (a real one) at step 5."""
    import torch.distributed as dist

    from pixbench.tasks.classify import run as classify
    from pixbench.tasks.runner import Run
    from pixbench.tasks.signals import Interrupted

    os.environ.update(env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    real = Run.tick

    def tick(self, state):
        if rank == 1 and state.global_step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        real(self, state)

    Run.tick = tick
    spec = make_classify_spec(load_params(Path(params_path)), size=None, patch=4, seed=0)
    try:
        classify.run(spec, Paths(), progress=False)
        result = {"finished": True}
    except Interrupted as exc:
        result = {"code": exc.exit_code, "message": str(exc)}
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def test_ddp_ranks_stop_together_when_one_gets_the_signal(tiny_project, tmp_path):
    """Each rank polls its own handler; one small all-reduce per tick makes every rank stop at
    the same step (else rank 0 would wait forever at the next gradient all-reduce)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k.startswith("PIXBENCH_")}
    mp.spawn(_ddp_worker, args=(port, str(tiny_project), env, str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r.get("code") for r in results] == [143, 143], results
    steps = {int(re.search(r"checkpointed at step (\d+)", r["message"])[1]) for r in results}
    ckpt = Paths().run_dir("tiny", "classify-xxs-p4-s0") / CKPT_NAME
    assert steps == {5} and ckpt_step(ckpt) == 5
