"""What every step of the check is handed: plain data, so it pickles for a spawned child."""

from __future__ import annotations

from dataclasses import dataclass

from gpucheck.data import FORMS, REPO_PARAMS, Form


@dataclass(frozen=True)
class Ctx:
    cpu: bool  # the CPU form: device cpu, gloo, the quick bench suite, tight sizes
    work: str  # the check's work dir (params, caches, runs, logs, results)
    out: str  # where the summary and the benchmark files go
    params: str  # the check's params.yaml (written by the `data` step)
    bench_suite: str  # a benchsuite profile
    bench_select: tuple[str, ...] = ()  # case-id substrings to run (empty: every case)
    bench_deadline_s: float | None = None  # stop starting cases after this long (partial)
    recipes: str = str(REPO_PARAMS)  # the params.yaml whose `recipes:` the tasks run
    sizes: str = ""  # "cpu" or "gpu" (data.FORMS); empty: the device's

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    @property
    def backend(self) -> str:
        return "gloo" if self.cpu else "nccl"

    @property
    def form(self) -> Form:
        return FORMS[self.sizes or ("cpu" if self.cpu else "gpu")]
