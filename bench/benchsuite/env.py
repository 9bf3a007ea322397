"""The environment a benchmark ran in, and the file name that carries it.

The name holds what makes numbers comparable (device, dtypes, torch version), e.g.
`cpu-fp32-bf16-torch2.14.1` or `cuda-NVIDIA_H100_80GB_HBM3-bf16-fp32-torch2.14.1`; everything
else that can move a figure (CPU model, ISA, threads, load average, git SHA) is inside the JSON.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from pixbench.runio import device_info, git_state, versions


def sanitize(text: str) -> str:
    """File-name safe: runs of anything but letters, digits and dots become one underscore."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")


def torch_version_tag() -> str:
    import torch

    return torch.__version__.split("+")[0]  # "2.14.1+cu130" -> "2.14.1"; the full one is in env


def env_name(profile: str, device: str, dtypes: tuple[str, ...]) -> str:
    import torch

    if device == "cuda":
        where = f"cuda-{sanitize(torch.cuda.get_device_name(0))}"
    else:
        where = "cpu"
    name = f"{where}-{'-'.join(dtypes)}-torch{torch_version_tag()}"
    return name if profile in ("cpu", "gpu") else f"{profile}-{name}"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def busy_cores(seconds: float = 1.0) -> float | None:
    """CPU cores in use by other processes right now (from /proc/stat over `seconds`)."""
    def sample() -> tuple[int, int]:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(f[:8]), f[3] + f[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (1 - (i1 - i0) / max(1, t1 - t0))


def auto_threads() -> tuple[int, str]:
    """Intra-op threads for a CPU run: the cores nobody else is using at the start.

    Two OpenMP threads on a 2-core box where another process holds a core wait at barriers on
    every small op (measured here: a width-48 train step 20x slower than on one thread), while
    one thread runs at full speed; the peak is measured with the same threads, so MFU stays fair.
    """
    n = os.cpu_count() or 1
    busy = busy_cores()
    if busy is None:
        return n, "all cores (load unknown)"
    threads = max(1, min(n, round(n - busy)))
    return threads, f"{busy:.1f} of {n} cores busy with other work at the start"


def environment(device: str) -> dict:
    """Versions, git state, device, ISA, threads and the load average when the run started."""
    import torch

    env = {**git_state(), "versions": versions(), **device_info(device),
           "cpu_isa": torch.backends.cpu.get_cpu_capability(),
           "interop_threads": torch.get_num_interop_threads(),
           "load_average_start": load_average(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   gpu_sm_count=props.multi_processor_count,
                   allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return env
