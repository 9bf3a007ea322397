"""`pixbench verify`: compare the current sweep's results with the committed reference."""

from __future__ import annotations

from typing import Annotated

import typer

from pixbench.cli.options import (PARAMS_FILE, ClusterOpt, LauncherOpt, ParamsOpt, ProfileOpt,
                                  WaitOpt, check_run_flags, command, launch_and_print,
                                  load_params)

UpdateOpt = Annotated[bool, typer.Option(
    "--record", "--update-reference", help="Write reports/reference/<profile>.json from the current runs "
    "instead of comparing with it.")]


@command("verify")
def verify_cmd(update_reference: UpdateOpt = False, params_path: ParamsOpt = PARAMS_FILE,
               profile: ProfileOpt = None, launcher: LauncherOpt = None,
               cluster: ClusterOpt = None, wait: WaitOpt = True) -> None:
    """Did the current sweep reproduce reports/reference/<profile>.json? Bitwise on the same
    machine kind and spec, else within a tolerance from the seed spread (params.yaml `verify`).
    Prints "reproduced k of n cells" and every departure; exit 2 on a departure."""
    from pixbench.config.pipeline import make_verify_spec

    check_run_flags(launcher=launcher, cluster=cluster)
    params = load_params(params_path, profile)
    spec = make_verify_spec(params, params_path, update_reference=update_reference)
    launch_and_print(spec, ("path", "reproduced", "cells", "departures", "groups",
                                      "runs", "job_id", "state"),
                     stale="error", device="cpu", launcher=launcher, cluster=cluster, wait=wait)
