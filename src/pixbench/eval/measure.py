"""Measured throughput and peak memory of a model's train step and inference.

Timing: warm-up steps first, then wall time of `steps` synchronised steps (nanoGPT's burn-in
then time). Peak memory: on CUDA the allocator's peak; on CPU the process's peak resident set
(VmHWM), reset just before the timed steps by writing 5 to /proc/self/clear_refs, so the figure
is the peak while training this model, not the import or data-loading high-water mark.
"""

from __future__ import annotations

import copy
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> bool:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _read_peak_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mb("VmHWM")


def _current_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _proc_status_mb("VmRSS")


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def measure_train(model: torch.nn.Module, batch: torch.Tensor, labels: torch.Tensor, *,
                  bf16: bool, steps: int, warmup: int = 2) -> dict:
    """img/s and peak memory of fwd+bwd+AdamW on a throwaway copy (the run's state is untouched)."""
    device = batch.device
    model = copy.deepcopy(model).train()
    # fused, as the runs' optimiser (tasks/optim.py), so the probe times the same step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cpu", "cuda"))

    def step() -> None:
        with autocast(device, bf16):
            loss = F.cross_entropy(model(batch), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    have_peak = _reset_peak(device)
    base = _current_mb(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    dt = time.perf_counter() - t0
    peak = _read_peak_mb(device) if have_peak else None
    del model, opt
    # peak_mem_mb: the whole process (CPU: RSS incl. libraries); the delta over the state just
    # before the timed steps (weights, optimizer state, data already resident) isolates what the
    # step itself adds: activations, gradients, workspace
    delta = None if peak is None or base is None else max(0.0, peak - base)
    return {"train_img_per_s": steps * batch.shape[0] / dt, "peak_mem_mb": peak,
            "step_mem_mb": delta,
            "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"}


@torch.no_grad()
def measure_inference(model: torch.nn.Module, batch: torch.Tensor, *, bf16: bool, steps: int,
                      warmup: int = 1, **forward_kwargs) -> dict:
    """Images per second of `model(batch, **forward_kwargs)` in eval mode, after `warmup`."""
    device = batch.device
    was_training = model.training
    model.eval()
    for _ in range(warmup):
        with autocast(device, bf16):
            model(batch, **forward_kwargs)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with autocast(device, bf16):
            model(batch, **forward_kwargs)
    _sync(device)
    dt = time.perf_counter() - t0
    model.train(was_training)
    return {"infer_img_per_s": steps * batch.shape[0] / dt}
