"""pytest-benchmark front end of the suite (bench/benchsuite): one test per case of a profile.

    pytest bench/ --benchmark-only                          # profile auto: gpu with CUDA, else cpu
    pytest bench/ --benchmark-only --bench-profile quick    # seconds
    pytest bench/ --benchmark-only --bench-profile gpu -m gpu   # the project's addopts deselect gpu

Cases come from benchsuite.plan, are run by the same BenchSession as `make bench` (the
timed steps go through `benchmark.pedantic`), and at the end of the session the same `finalize`
writes reports/bench/<env>.json, .md and plots (`-partial` in the name when -k left cases out).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

WROTE = pytest.StashKey[Path]()


def pytest_addoption(parser):
    group = parser.getgroup("benchsuite")
    group.addoption("--bench-profile", default="auto",
                    help="benchsuite profile: auto (gpu with CUDA, else cpu), quick, cpu, gpu")
    group.addoption("--bench-out", default="reports/bench",
                    help="where <env>.json, .md and plots go (relative to the rootdir)")


def _profile(config):
    from benchsuite.plan import get_profile

    return get_profile(config.getoption("--bench-profile"))


def _marks(profile) -> list:
    if profile.device != "cuda":
        return []
    import torch

    return [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                reason="needs a CUDA device")]


def pytest_generate_tests(metafunc):
    """bench_case: `test_workload`'s cases; gen_case: the MAE, DiT, tokenizer and FID cases
    (plan.GEN_GROUPS), which `test_gen_workload` runs."""
    from benchsuite.plan import GEN_GROUPS

    for name, gen in (("bench_case", False), ("gen_case", True)):
        if name in metafunc.fixturenames:
            prof = _profile(metafunc.config)
            metafunc.parametrize(name, [pytest.param(c, id=c.id, marks=_marks(prof))
                                        for c in prof.cases if (c.group in GEN_GROUPS) == gen])
    if "peak_dtype" in metafunc.fixturenames:
        prof = _profile(metafunc.config)
        metafunc.parametrize("peak_dtype", [pytest.param(d, id=d, marks=_marks(prof))
                                            for d in prof.dtypes])


@pytest.fixture(scope="session")
def bench_session(request):
    from benchsuite.run import finalize
    from benchsuite.session import BenchSession

    session = BenchSession(_profile(request.config))
    yield session
    session.close()
    if session.records:
        out = Path(request.config.getoption("--bench-out"))
        path = finalize(session, out if out.is_absolute() else request.config.rootpath / out)
        request.config.stash[WROTE] = path


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = config.stash.get(WROTE, None)
    if path is not None:
        terminalreporter.write_line(f"benchsuite: wrote {path} and {path.with_suffix('.md')}")


@pytest.fixture
def pedantic_timer(benchmark):
    """A session timer that hands the timed steps to pytest-benchmark, keeping each time."""

    def timer(step, rounds: int) -> list[float]:
        times: list[float] = []

        def timed() -> None:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)

        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=0, iterations=1)
        return times

    return timer
