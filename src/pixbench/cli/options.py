"""The ONE option set of the `pixbench` commands, and the helpers every noun module uses.

- Option aliases (`ParamsOpt`, `ProfileOpt`, `StaleOpt`, ...): a flag means the same thing, with
  the same help, in every command. `--profile` is always a profile of the params file.
- `noun(name, help)` / `command(name)`: a noun module's sub-app (`pixbench NAME ...`) or a
  top-level command. They are only recorded here; `cli/__init__.py` mounts them on the root app,
  so a noun module never imports the root (no import cycles) and importing it registers it.
- `pixbench_command()`: the whole command line as click builds it; the study (below the CLI)
  is handed it to read its cells' commands.
- `spec_command(sub_app, name, keys=...)`: a command that builds a task spec from
  params.yaml and launches it. The decorated function takes the loaded `params` and its own
  flags and returns the spec; the decorator appends the shared run flags (--stale, --device,
  --launcher, --cluster, --wait, --params, --profile), validates them, launches the spec with
  `pixbench.launch.launch` and prints the chosen metric keys as one JSON line.

Heavy modules (torch, timm, dvc, submitit) are imported only inside command bodies.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer

from pixbench.errors import UserError

CONTEXT = {"help_option_names": ["-h", "--help"]}
PARAMS_FILE = Path("params.yaml")

ParamsOpt = Annotated[Path, typer.Option("--params", help="The params file (hyper-parameters).")]
ProfileOpt = Annotated[Optional[str], typer.Option(
    "--profile", help="Run under another profile of params.yaml than its `profile` key.")]
LauncherOpt = Annotated[Optional[str], typer.Option(
    "--launcher", help="local or slurm; default: slurm when a cluster is named, else local.")]
ClusterOpt = Annotated[Optional[str], typer.Option(
    "--cluster", help="Cluster profile slurm/clusters/NAME.yaml (or PIXBENCH_CLUSTER).")]
PatchOpt = Annotated[int, typer.Option("--patch", help="Patch size; 1 = pixel tokens.")]
# 0 <= seed < 2**31: a seed is a valid numpy/torch/C-int seed everywhere and the run id keeps
# the form s<digits> (`s-1` would read as a name separator).
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**31 - 1,
                                      help="Seed for init, order, augmentation, masks.")]
StaleOpt = Annotated[str, typer.Option(
    "--stale", help="A run dir left by another spec: 'error' or 'restart' (discard it).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
WaitOpt = Annotated[bool, typer.Option(
    "--wait/--no-wait", help="Block until SLURM jobs end and print their metrics.")]


def size_option(help: str):
    """`--size`: a model size key; each track names its own sizes and default."""
    return Annotated[Optional[str], typer.Option("--size", help=help)]


# Record of what the noun modules register; cli/__init__.py mounts it on the root app.
GROUPS: list[tuple[str, typer.Typer]] = []
COMMANDS: list[tuple[str, Callable]] = []


def noun(name: str, help: str) -> typer.Typer:
    """A sub-app `pixbench NAME ...`; its commands register on the returned Typer."""
    sub = typer.Typer(help=help, no_args_is_help=True, context_settings=CONTEXT)
    GROUPS.append((name, sub))
    return sub


def command(name: str) -> Callable[[Callable], Callable]:
    """A top-level command `pixbench NAME`."""
    def deco(fn: Callable) -> Callable:
        COMMANDS.append((name, fn))
        return fn
    return deco


def mount(app: typer.Typer) -> None:
    """Add every recorded command and noun to the root app (once, in cli/__init__.py)."""
    for name, fn in COMMANDS:
        app.command(name)(fn)
    for name, sub in GROUPS:
        app.add_typer(sub, name=name)


@functools.lru_cache(maxsize=1)
def pixbench_command():
    """The `pixbench` command line as click builds it, once (Typer rebuilds it on every call):
    every registered noun and command mounted on a fresh root (the root app in cli/__init__.py
    cannot be imported by the noun modules that hand this to the study: an import cycle).
    Every noun is registered by then: importing any module of this package runs
    cli/__init__.py, which imports them all first."""
    app = typer.Typer(context_settings=CONTEXT)
    mount(app)
    return typer.main.get_command(app)


def check_stale(stale: str) -> None:
    if stale not in ("error", "restart"):
        raise UserError(f"--stale must be 'error' or 'restart', not {stale!r}")


DEVICE_RE = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")


def check_run_flags(*, stale: str = "error", device: str = "auto", launcher: str | None = None,
                    cluster: str | None = None, **_) -> None:
    """The shared run flags, checked before params are read or anything is written (whether
    CUDA is there is checked where the task runs: a SLURM node has what the login node lacks)."""
    from pixbench.names import check_name

    check_stale(stale)
    if not DEVICE_RE.fullmatch(device):
        raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if launcher is not None and launcher not in ("local", "slurm"):
        raise UserError(f"--launcher must be 'local' or 'slurm', not {launcher!r}")
    if cluster is not None:
        check_name(cluster, "--cluster")  # a file name under slurm/clusters/, never a path


def check_name_flags(flags: dict, names: tuple[str, ...] = ("size", "variant", "target")) -> None:
    """Flags that become parts of run ids (and so of paths) must be safe names."""
    from pixbench.names import check_name

    for name in names:
        if flags.get(name) is not None:
            check_name(flags[name], f"--{name}")


def load_params(path: Path, profile: str | None):
    """params.yaml, switched to `--profile` when one is given (it must be one of its profiles)."""
    from pixbench.config import load_params as load
    from pixbench.names import check_name

    if profile is not None:
        check_name(profile, "--profile")
    params = load(path)
    if profile is not None:
        if profile not in params.profiles:
            raise UserError(f"--profile {profile!r} is not one of {path}: profiles "
                            f"({', '.join(params.profiles)})")
        params = params.switch(profile)
    return params


def launch_and_print(spec, keys: tuple[str, ...], *, stale: str, device: str,
                     launcher: str | None, cluster: str | None, wait: bool) -> None:
    """Run `spec` here or on SLURM and print the metrics' `keys` (those present) as JSON."""
    from pixbench.config import Paths
    from pixbench.launch import launch

    metrics = launch(spec, Paths(), launcher=launcher, cluster=cluster, stale=stale,
                     device=device, wait=wait)
    typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}))


def _option(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)


# The shared run flags spec_command appends, in the order --help lists them.
RUN_OPTIONS = (_option("stale", StaleOpt, "error"), _option("device", DeviceOpt, "auto"),
               _option("launcher", LauncherOpt, None), _option("cluster", ClusterOpt, None),
               _option("wait", WaitOpt, True))
PARAMS_OPTIONS = (_option("params_path", ParamsOpt, PARAMS_FILE),
                  _option("profile", ProfileOpt, None))


def spec_command(sub_app: typer.Typer, name: str, *, keys: tuple[str, ...],
                 doc: str | None = None) -> Callable[[Callable], Callable]:
    """Register `make_spec(params, **own_flags) -> spec` as the command `name` that launches
    the spec (its task is the spec's own); its help is `doc` or make_spec's docstring."""
    def deco(make_spec: Callable) -> Callable:
        own = list(inspect.signature(make_spec, eval_str=True).parameters.values())[1:]

        def run(**flags) -> None:
            run_flags = {p.name: flags.pop(p.name) for p in RUN_OPTIONS}
            check_run_flags(**run_flags)
            check_name_flags(flags)
            params = load_params(flags.pop("params_path"), flags.pop("profile"))
            launch_and_print(make_spec(params, **flags), keys, **run_flags)

        run.__signature__ = inspect.Signature([*own, *RUN_OPTIONS, *PARAMS_OPTIONS])
        run.__doc__ = doc or make_spec.__doc__
        run.__name__ = make_spec.__name__
        sub_app.command(name)(run)
        return make_spec
    return deco
