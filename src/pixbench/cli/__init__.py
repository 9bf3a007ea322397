"""The `pixbench` command: thin Typer commands; heavy imports happen inside them.

Flags pick a run and where it runs; hyper-parameters come only from params.yaml. The shared
flags and helpers are in options.py; each noun has its own module, which registers its
commands when imported. A new noun (say `cli/params.py`, with `app = options.noun("params",
help=...)` and `@app.command("show")`) is added by naming it in the import line below.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from pixbench import __version__
# The nouns, in --help order; importing one registers its commands.
from pixbench.cli import data, classify, mae, bench, report, gen, params  # noqa: F401,I001
from pixbench.cli.options import CONTEXT, mount
from pixbench.errors import UserError

app = typer.Typer(help="pixbench: pixel tokens vs patch tokens (arXiv 2406.09415), reproducibly.",
                  no_args_is_help=True, pretty_exceptions_enable=False, context_settings=CONTEXT)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"pixbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_print_version,
        is_eager=True)] = False) -> None:
    """pixbench: pixel tokens vs patch tokens (arXiv 2406.09415), reproducibly."""


mount(app)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        app()
    except UserError as exc:
        if os.environ.get("PIXBENCH_DEBUG") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
