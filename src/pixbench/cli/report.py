"""`pixbench report`: the Markdown report and plots of a profile."""

from __future__ import annotations

from pixbench.cli.options import (PARAMS_FILE, ClusterOpt, LauncherOpt, ParamsOpt, ProfileOpt,
                                  WaitOpt, check_run_flags, command, launch_and_print,
                                  load_params)


@command("report")
def report_cmd(params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None,
               launcher: LauncherOpt = None, cluster: ClusterOpt = None,
               wait: WaitOpt = True) -> None:
    """Assemble the Markdown report and PNG plots from every metrics file of the profile."""
    from pixbench.config.pipeline import make_report_spec

    check_run_flags(launcher=launcher, cluster=cluster)
    spec = make_report_spec(load_params(params_path, profile), params_path)
    launch_and_print(spec, ("path", "job_id", "state"), stale="error", device="cpu",
                     launcher=launcher, cluster=cluster, wait=wait)
