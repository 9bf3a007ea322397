"""The one task runner: what every task shares between "here is a spec" and "here are metrics".

A task is a spec class (config/) plus a `run(spec, paths, *, stale, device, progress)` that
builds its data and model and trains/evaluates; everything else lives here, once:

- the run-dir lifecycle: a finished run of the same spec digest is reused, a run dir left by
  another spec is refused (or discarded with `--stale restart`);
- the rank-aware device (each DDP rank takes its local GPU) and rank-0-only writes;
- the self-describing run dir: spec.json (resolved spec + digest), manifest.json (git SHA,
  versions, device, seed, world size);
- ONE checkpoint path (`ckpt/last.pt`) holding ONE `State` beside every module's and
  optimiser's state_dict, loaded with `weights_only=True`;
- the guard before every checkpoint write: a non-finite running loss or weight stops the run
  with the last good checkpoint untouched (the reliability issue adds the signal-triggered
  checkpoint and the run-dir lock at `Run.tick` and `Run.open`);
- atomic result files, metrics.json last: its presence marks the run finished.

MAE's launcher resumed from `checkpoint.pth` while saving `checkpoint-%s.pth`; with one path owned
by `Run.restore`/`Run.save` that cannot happen here.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixbench import distributed
from pixbench.config.schema import spec_diff
from pixbench.errors import UserError
from pixbench.runio import (CKPT_NAME, atomic_write_bytes, atomic_write_json, load_checkpoint,
                            read_json, run_manifest, save_checkpoint)

METRICS = "metrics.json"


@dataclasses.dataclass
class State:
    """Everything a resumed run needs besides weights and optimiser moments.

    Batches, augmentation and noise are functions of (seed, step), so the step counters are the
    RNG positions. Running sums and curve rows are here so a resumed run reports the same
    means and curves as an uninterrupted one."""

    global_step: int = 0  # optimiser updates done
    epoch: int = 0  # next epoch to run (epoch-based tasks)
    epoch_step: int = 0  # next step within that epoch
    train_time_s: float = 0.0  # summed step time, across sessions
    wall_time_s: float = 0.0  # summed session wall time, across sessions
    loss_sum: float = 0.0  # of the current window (epoch or curve interval)
    loss_count: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)  # curve rows
    window: list[dict] = dataclasses.field(default_factory=list)  # rows of the current window
    extra: dict = dataclasses.field(default_factory=dict)  # task counters (e.g. code ages)

    def add_loss(self, loss: float) -> None:
        self.loss_sum += loss
        self.loss_count += 1

    def take_mean_loss(self) -> float:
        """The mean loss of the window so far, and start a new window."""
        mean = self.loss_sum / max(1, self.loss_count)
        self.loss_sum, self.loss_count = 0.0, 0
        return mean


def pick_device(requested: str) -> torch.device:
    """auto: this rank's GPU when there is one, else the CPU."""
    requested = distributed.local_device(requested)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {requested}: CUDA is not available on this machine")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise UserError(f"--device {requested!r}: expected auto, cpu, cuda or cuda:N")
    device = torch.device(requested)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # NCCL collectives use the current device, not cuda:0
    return device


def finished_metrics(run_dir: Path, spec, stale: str) -> dict | None:
    """Check an existing run dir against the spec: its metrics when finished with this spec;
    None when there is nothing (left) to reuse. Another spec's run dir is an error naming the
    differing fields, unless stale == "restart", which discards it (what DVC does after a
    params change)."""
    spec_path = run_dir / "spec.json"
    if not run_dir.exists():
        return None
    if spec_path.exists():
        old = read_json(spec_path, "run spec")
        if old.get("digest") == spec.digest():
            metrics = run_dir / METRICS
            return read_json(metrics, "metrics") if metrics.exists() else None
        if stale != "restart":
            diff = spec_diff(old.get("spec", {}), spec.canonical())
            what = run_dir / CKPT_NAME if (run_dir / CKPT_NAME).exists() else spec_path
            raise UserError(f"{what} was written for another spec "
                            f"({'; '.join(diff[:3]) or 'digest'}); pass --stale restart to discard it")
    elif (run_dir / CKPT_NAME).exists() and stale != "restart":
        raise UserError(f"{run_dir / CKPT_NAME} has no spec.json beside it; pass --stale restart")
    shutil.rmtree(run_dir)
    return None


class Run:
    """One run of one spec on this rank. `Run.open` returns the finished metrics instead when
    the run dir already holds them (on every rank)."""

    def __init__(self, spec, paths, device: torch.device, checkpoint_every_s: float) -> None:
        self.spec, self.paths, self.device = spec, paths, device
        self.dir = paths.run_dir(spec.profile, spec.run_id)
        self.ckpt_path = self.dir / CKPT_NAME
        self.checkpoint_every_s = checkpoint_every_s
        self.modules: dict[str, Any] = {}
        self._session_start = self._last_save = time.monotonic()
        self._wall_base = 0.0

    @classmethod
    def open(cls, spec, paths, *, stale: str = "error", device: str = "auto",
             checkpoint_every_s: float = 600.0) -> Run | dict:
        if stale not in ("error", "restart"):
            raise UserError(f"--stale must be 'error' or 'restart', not {stale!r}")
        run_dir = paths.run_dir(spec.profile, spec.run_id)
        done = finished_metrics(run_dir, spec, stale) if distributed.is_main() else None
        distributed.barrier()  # rank 0 may have discarded a stale dir
        if done is not None or (run_dir / METRICS).exists():
            done = done or read_json(run_dir / METRICS, "metrics")
            if distributed.is_main():  # DVC removed its copies before re-running the stage
                publish(paths, spec, done, run_dir / "curve.json")
            return done
        return cls(spec, paths, pick_device(device), checkpoint_every_s)

    @property
    def is_main(self) -> bool:
        return distributed.is_main()

    def describe(self, **extra: Any) -> None:
        """spec.json + manifest.json. Call after inputs are checked, so a refused run leaves
        no run-dir stub behind."""
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.dir / "spec.json",
                              {"digest": self.spec.digest(), "spec": self.spec.canonical()})
            atomic_write_json(self.dir / "manifest.json",
                              {**run_manifest(getattr(self.spec, "seed", None), str(self.device)),
                               "world_size": distributed.world_size(), **extra})

    # ---------------------------------------------------------------------- checkpoint

    def restore(self, **modules: Any) -> State:
        """Register what the checkpoint holds (modules, optimisers: anything with
        state_dict/load_state_dict) and load it from ckpt/last.pt when there is one."""
        self.modules = modules
        if not self.ckpt_path.exists():
            return State()
        ckpt = load_checkpoint(self.ckpt_path)
        if not isinstance(ckpt, dict) or "modules" not in ckpt or "spec_digest" not in ckpt:
            raise UserError(f"{self.ckpt_path}: not a pixbench checkpoint")
        if ckpt["spec_digest"] != self.spec.digest():
            raise UserError(f"{self.ckpt_path}: checkpoint was written for another spec "
                            f"({ckpt['spec_digest']} != {self.spec.digest()}); pass --stale restart")
        try:
            for name, obj in modules.items():
                _unwrap(obj).load_state_dict(ckpt["modules"][name])
            state = State(**ckpt["state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{self.ckpt_path}: does not fit this run "
                            f"({str(exc).splitlines()[0]})") from None
        self._wall_base = state.wall_time_s
        return state

    def tick(self, state: State) -> None:
        """After every optimiser step: checkpoint when `checkpoint_every_s` has passed."""
        if time.monotonic() - self._last_save >= self.checkpoint_every_s:
            self.save(state)

    def save(self, state: State) -> None:
        """Write ckpt/last.pt (rank 0), after the guard: a diverged run never overwrites its
        last good checkpoint."""
        now = time.monotonic()
        state.wall_time_s = self._wall_base + (now - self._session_start)
        self._last_save = now
        self._check_finite(state)
        if not self.is_main:
            return
        save_checkpoint(self.ckpt_path, {
            "modules": {k: _unwrap(v).state_dict() for k, v in self.modules.items()},
            "state": dataclasses.asdict(state), "spec_digest": self.spec.digest(),
            "spec": self.spec.canonical(), "torch": str(torch.__version__)})

    def _check_finite(self, state: State) -> None:
        bad = not math.isfinite(state.loss_sum) or any(
            not bool(torch.isfinite(p).all()) for m in self.modules.values()
            if isinstance(m, nn.Module) for p in m.parameters())
        if bad:
            last = f"{self.ckpt_path} (kept)" if self.ckpt_path.exists() else "none written"
            raise UserError(f"{self.spec.run_id}: training diverged (non-finite loss or weights) "
                            f"by step {state.global_step}; last good checkpoint: {last}")

    # -------------------------------------------------------------------------- results

    def write_json(self, name: str, obj: Any) -> None:
        if self.is_main:
            atomic_write_json(self.dir / name, obj)

    def write_bytes(self, name: str, data: bytes) -> None:
        if self.is_main:
            atomic_write_bytes(self.dir / name, data)

    def write_torch(self, name: str, obj: Any) -> None:
        """A torch file handed to users (weights): tensors and plain containers only, so it
        loads with weights_only=True."""
        if self.is_main:
            save_checkpoint(self.dir / name, obj)

    def finish(self, metrics: dict, *, curve: list[dict] | None = None,
               **json_files: Any) -> dict:
        """Write result files, then metrics.json last (it marks the run finished); every rank
        returns the metrics."""
        if curve is not None:
            json_files["curve"] = curve
        for name, obj in json_files.items():
            self.write_json(f"{name}.json", obj)
        if self.is_main:
            publish(self.paths, self.spec, metrics, self.dir / "curve.json")
        self.write_json(METRICS, metrics)
        distributed.barrier()
        return metrics


def dvc_file(paths, kind: str, profile: str, run_id: str) -> Path:
    """reports/{metrics,curves}/<profile>/<run_id>.json: one place for the DVC-facing names."""
    return Path(paths.reports_dir) / kind / profile / f"{run_id}.json"


def publish(paths, spec, metrics: dict, curve_path: Path) -> None:
    """The DVC-facing copies of a run's results, beside its run dir: the numeric metrics and
    the learning curve, which each stage declares as `metrics:` and `plots:` (cache: false),
    so `dvc metrics show/diff`, `dvc plots` and `dvc exp show` list them per cell."""
    atomic_write_json(dvc_file(paths, "metrics", spec.profile, spec.run_id), headline(metrics))
    if curve_path.exists():
        atomic_write_json(dvc_file(paths, "curves", spec.profile, spec.run_id),
                          read_json(curve_path, "curve"))


def headline(metrics: dict) -> dict:
    """The numbers of a metrics dict (no identifiers, no flags): what `dvc metrics` shows."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _unwrap(obj: Any) -> Any:
    return distributed.unwrap(obj) if isinstance(obj, nn.Module) else obj
