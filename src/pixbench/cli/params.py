"""`pixbench params show`: what a profile resolves to (recipes + its overrides), as YAML."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pixbench.cli.options import PARAMS_FILE, ParamsOpt, ProfileOpt, noun

app = noun("params", help="Inspect params.yaml: recipes and profile overrides, resolved.")

TrackOpt = Annotated[Optional[str], typer.Option(
    "--track", help="data, classify, mae, gen, or a part below one (mae.pretrain, gen.vq).")]


@app.command("show")
def params_show(params_path: ParamsOpt = PARAMS_FILE, profile: ProfileOpt = None,
                track: TrackOpt = None) -> None:
    """Print a profile's resolved recipe (recipes + its overrides) as YAML.

    The profile defaults to params.yaml's `profile`; a value stated outside its own recipe
    part (a profile override, a recipe it extends) is marked `# <- where`."""
    from pixbench.config import show_params
    from pixbench.names import check_name

    if profile is not None:
        check_name(profile, "--profile")
    typer.echo(show_params(params_path, profile, track), nl=False)
