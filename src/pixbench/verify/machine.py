"""The machine kind that produced a set of runs: what must match for bitwise-equal numbers.

Float results of the same seed and spec are bitwise equal on one machine, and differ in the
last bits between CPU kinds: torch picks its GEMM and element-wise kernels by instruction set
(AVX2 vs AVX-512; `torch.backends.cpu.get_cpu_capability()`), and a different thread count or
torch version can change reduction order (shared/notes/environment.md, measured on AVX2 and
AVX-512 machines). The kind is therefore the CPU model, its vector/matrix ISA flags and torch's
kernel capability, the torch version, the intra-op threads, and the device (GPU name on CUDA).
"""

from __future__ import annotations

import json
from pathlib import Path

# The /proc/cpuinfo flags that select different kernels (vector width, bf16/int8 dot products,
# AMX tiles); the rest (sse, aes, ...) are the same on every machine torch runs on.
ISA_FLAGS = ("fma", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile",
             "amx_bf16", "amx_int8")
# Fields of a run's manifest.json (runio.run_manifest) that are part of the kind.
RUN_FIELDS = ("cpu", "vendor", "kernels", "device", "gpu", "torch", "threads")
MIXED = "mixed"


def cpu_flags(cpuinfo: str | None = None) -> tuple[str | None, list[str]]:
    """(CPU model name, the ISA_FLAGS it has) from /proc/cpuinfo; (None, []) where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None, []
    model, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [f for f in ISA_FLAGS if f in flags]


def this_machine() -> dict:
    """The CPU facts of the machine running now (torch imported only here)."""
    import torch

    model, flags = cpu_flags()
    return {"cpu": model, "isa_flags": flags, "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}


def run_facts(manifest: dict) -> dict:
    """The RUN_FIELDS of one run's manifest.json."""
    kernels = manifest.get("kernels")
    return {"cpu": manifest.get("cpu"), "vendor": manifest.get("cpu_vendor"),
            "kernels": json.dumps(kernels, sort_keys=True) if kernels is not None else None,
            "device": manifest.get("device"),
            "gpu": manifest.get("gpu"), "torch": manifest.get("versions", {}).get("torch"),
            "threads": manifest.get("torch_threads")}


def machine_kind(manifests: list[dict], here: dict) -> dict:
    """The kind that made these runs: each RUN_FIELD shared by every run (else "mixed"), and
    the ISA flags and kernel capability of `here` (this_machine()) when it is the same CPU
    model with the same torch, else null: the runs were made elsewhere, their flags unknown."""
    kind = {}
    for field in RUN_FIELDS:
        values = {run_facts(m)[field] for m in manifests}
        kind[field] = values.pop() if len(values) == 1 else MIXED
    same = kind["cpu"] == here.get("cpu") and kind["torch"] == here.get("torch")
    kind["isa_flags"] = here.get("isa_flags") if same else None
    kind["capability"] = here.get("capability") if same else None
    return kind


def same_kind(a: dict, b: dict) -> bool:
    """Bitwise equality can be expected: every field known, none mixed, all equal."""
    keys = RUN_FIELDS + ("isa_flags", "capability")
    known = all(a.get(k) is not None and a.get(k) != MIXED for k in keys if k != "gpu")
    return known and all(a.get(k) == b.get(k) for k in keys)


def describe(kind: dict) -> str:
    flags = "/".join(kind.get("isa_flags") or []) or "flags unknown"
    where = kind.get("gpu") or f"{kind.get('cpu')} ({kind.get('capability') or '?'}; {flags})"
    kernels = kind.get("kernels")
    set_env = ""
    if kernels and kernels != MIXED:
        env = {k: v for k, v in json.loads(kernels).items() if v and k != "aten_capability"}
        set_env = ", " + " ".join(f"{k}={v}" for k, v in sorted(env.items())) if env else ""
    return (f"{where}, device {kind.get('device')}, torch {kind.get('torch')}, "
            f"{kind.get('threads')} threads{set_env}")
