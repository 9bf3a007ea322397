"""A real kill: SIGKILL the CLI mid-run, run the same command again, compare with an unbroken run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch
import yaml

from pixbench.config import Paths, load_params, make_classify_spec
from pixbench.runio import CKPT_NAME
from pixbench.tasks.classify import run as classify
from test_faults import untimed

CMD = [sys.executable, "-m", "pixbench.cli", "classify", "run", "--patch", "1", "--seed", "2"]


def test_sigkill_then_same_command_resumes_bitwise(tiny_project, tmp_path, monkeypatch):
    params = yaml.safe_load(tiny_project.read_text())
    params["profiles"]["tiny"]["classify"].update(epochs=12, checkpoint_every_s=0.2)
    tiny_project.write_text(yaml.safe_dump(params))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = Paths().run_dir("tiny", "classify-xxs-p1-s2") / CKPT_NAME
    proc = subprocess.Popen(CMD, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["state"]["global_step"]
    assert 0 < killed_at < 12 * 8, f"kill landed at step {killed_at}: retune the test"
    assert not ckpt.with_name("metrics.json").exists()
    assert not any(p.name.endswith(".tmp") for p in ckpt.parent.iterdir())  # nothing half-written
    subprocess.run(CMD, env=env, check=True, capture_output=True)
    resumed = torch.load(ckpt, weights_only=True)["modules"]["model"]

    monkeypatch.setenv("PIXBENCH_RUNS_DIR", str(tmp_path / "unbroken"))
    threads = torch.get_num_threads()  # conftest's setting, restored after
    try:
        torch.set_num_threads(1)
        spec = make_classify_spec(load_params(tiny_project), size=None, patch=1, seed=2)
        classify.run(spec, Paths(), progress=False)
        ref = torch.load(Paths().run_dir("tiny", spec.run_id) / CKPT_NAME, weights_only=True)["modules"]["model"]
    finally:
        torch.set_num_threads(threads)
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
    # curve rows and dvclive steps logged after the killed checkpoint are not duplicated
    got, want = ckpt.parent.parent, Paths().run_dir("tiny", spec.run_id)
    assert untimed(json.loads((got / "curve.json").read_text())) == \
        untimed(json.loads((want / "curve.json").read_text()))
    live = sorted(p.relative_to(want) for p in (want / "dvclive").rglob("*") if p.is_file())
    assert live and live == sorted(p.relative_to(got) for p in (got / "dvclive").rglob("*")
                                   if p.is_file())
    for rel in live:
        assert (got / rel).read_bytes() == (want / rel).read_bytes(), rel
