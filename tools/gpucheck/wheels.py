"""Wheels for a GPU machine without a network: what pixbench imports that its image lacks.

The lent H200 machine (/work/.library/device/KINDS.md, package list read 2026-11-17) has
Python 3.12 with torch, torchvision, triton, timm, numpy, scipy, matplotlib, typer, rich, pyyaml
and the NVIDIA libraries, but not pydantic, diffusers, torch-fidelity, submitit or dvclive (and
dvc, which dvclive imports). CARRY pins those and everything they import that the image lacks,
at the versions tested here; `python -m gpucheck.wheels` (tools/ on the path) downloads them
(cp312, manylinux x86-64, no dependencies resolved: the list is complete) into a gitignored
folder:

    make gpu-wheels                  # -> wheels/ (about 8 MiB), then on the GPU machine:
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheels/*.whl
    export PYTHONPATH=/tmp/site:$PWD/tools:$PWD/bench:$PWD/src

torch is never carried (the image's is used; a CUDA torch wheel alone is far over the 64 MiB a
device-tool call carries). The check reports any distribution its steps imported that is
neither on TARGET_IMAGE nor in CARRY (`imports_missing_on_target`), and the CPU test asserts
there is none, so a new import that the GPU machine would lack fails in CI; when the packages
installed here are not the pinned ones (`carry_version_drift`), it says so instead.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

# The image's Python packages (KINDS.md "Python packages already there", 2026-11-17).
TARGET_IMAGE = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn
einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio
iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib
kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda
numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich
sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())

# What the check's steps import that the image lacks (measured: the CPU form's imports, less
# TARGET_IMAGE), plus submitit (the CLI's launcher) and timm (on the image, at a version
# nobody has read: carried to pin the tested one), at this project's tested versions. Binary
# ones (dulwich, orjson, pydantic-core, wcwidth) are fetched as cp312 manylinux wheels.
CARRY = (
    "annotated-types==0.8.0", "atpublic==9.0.0", "configobj==5.0.9", "diffusers==0.42.1",
    "diskcache==5.6.3", "dpath==2.2.0", "dulwich==1.2.21", "dvc==3.67.1", "dvc-data==3.18.3",
    "dvc-http==2.32.0", "dvc-objects==5.2.0", "dvc-render==1.0.2", "dvc-studio-client==0.23.0",
    "dvclive==3.49.1", "flatten-dict==0.5.0", "flufl.lock==9.2.0", "funcy==2.1",
    "orjson==3.13.0", "platformdirs==4.14.9", "pydantic==2.14.4", "pydantic-core==2.50.5",
    "pydantic-settings==2.16.3", "pydot==4.0.1", "pygtrie==2.6.2", "python-dotenv==1.2.4",
    "ruamel.yaml==0.19.1", "scmrepo==3.6.2", "sqltrie==0.11.3", "submitit==1.5.4",
    "timm==1.0.31", "torch-fidelity==0.4.0", "typing-inspection==0.4.5", "voluptuous==0.16.0",
    "wcwidth==0.9.4", "zc.lockfile==4.0",
)
PYTHON = "3.12"  # the image's
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
CARRY_LIMIT = 64 * 2**20  # what one device-tool call carries, the working tree included


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def carried() -> set[str]:
    return {normalize(req.split("==")[0]) for req in CARRY}


def distributions_of(modules: set[str]) -> set[str]:
    """The installed distributions that provide these top-level modules (stdlib: none)."""
    from importlib.metadata import packages_distributions

    table = packages_distributions()
    return {normalize(d) for m in modules for d in table.get(m, ())}


def _requires(dist: str) -> list[str]:
    """A distribution's run-time requirements here (no extras; markers of this Python)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    try:
        reqs = [Requirement(r) for r in requires(dist) or ()]
    except PackageNotFoundError:
        return []
    return [normalize(r.name) for r in reqs
            if r.marker is None or r.marker.evaluate({"extra": ""})]


def needed_from_wheels() -> set[str] | None:
    """What pixbench needs at run time and the image does not provide: pixbench's
    requirements, followed through every package that is carried or missing there, not
    through the image's own packages (the image's versions bring their own dependencies).
    None when pixbench is not installed (its metadata is what the walk starts from)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("pixbench")
    except PackageNotFoundError:
        return None
    seen, todo, own = set(), ["pixbench"], carried()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == "pixbench" or name in own or name not in TARGET_IMAGE:
            todo += _requires(name)
    return seen


def missing_on_target(modules: set[str]) -> list[str]:
    """Distributions the steps imported, that pixbench needs through packages the image lacks,
    and that neither the image nor CARRY provides."""
    imported, needed = distributions_of(modules), needed_from_wheels()
    if needed is not None:
        imported &= needed
    return sorted(imported - TARGET_IMAGE - carried() - {"pixbench"})


def version_drift() -> list[str]:
    """Carried packages installed here at another version than CARRY pins: the import list
    above was then measured on other code than the GPU machine will run."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for req in CARRY:
        name, pin = req.split("==")
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "not installed"
        if have != pin:
            out.append(f"{name} {have} (pinned {pin})")
    return out


def download(dest: Path, python: str = PYTHON) -> int:
    """pip download CARRY into dest (binary wheels for the image's Python); returns bytes."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + list(CARRY), check=True)
    return sum(p.stat().st_size for p in dest.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpucheck.wheels",
                                 description="Download the wheels the GPU image lacks.")
    ap.add_argument("--dest", type=Path, default=Path("wheels"))
    ap.add_argument("--python-version", default=PYTHON)
    args = ap.parse_args(argv)
    total = download(args.dest, args.python_version)
    print(f"{len(list(args.dest.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in "
          f"{args.dest}/ (a device-tool call carries {CARRY_LIMIT / 2**20:.0f} MiB in all)")
    return 0 if total < CARRY_LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
