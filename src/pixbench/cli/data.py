"""`pixbench data prepare`: the dataset caches."""

from __future__ import annotations

from typing import Annotated

import typer

from pixbench.cli.options import (PARAMS_FILE, ClusterOpt, LauncherOpt, ParamsOpt, ProfileOpt,
                                  WaitOpt, check_run_flags, launch_and_print, load_params,
                                  noun)

app = noun("data", help="Prepare dataset caches.")


@app.command("prepare")
def data_prepare(params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None,
                 gen: Annotated[bool, typer.Option(
                     "--gen", help="Prepare the generation track's images (profiles.P.gen.data) "
                                   "instead of the classification cache.")] = False,
                 launcher: LauncherOpt = None, cluster: ClusterOpt = None,
                 wait: WaitOpt = True) -> None:
    """Build the uint8 cache (arrays + labels + manifest) for the profile's data section."""
    from pixbench.config.pipeline import make_prepare_spec

    check_run_flags(launcher=launcher, cluster=cluster)
    spec = make_prepare_spec(load_params(params_path, profile), gen=gen)
    launch_and_print("prepare", spec, ("run_id", "path", "counts", "image_size", "channels",
                                       "num_classes", "job_id", "state"),
                     stale="error", device="cpu", launcher=launcher, cluster=cluster, wait=wait)
