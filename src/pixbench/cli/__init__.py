"""The `pixbench` command: thin Typer commands; heavy imports happen inside them.

Flags pick a run and where it runs; hyper-parameters come only from params.yaml. The shared
flags and helpers are in options.py; each noun has its own module, which registers its
commands when imported. A new noun (say `cli/params.py`, with `app = options.noun("params",
help=...)` and `@app.command("show")`) is added by naming it in the import line below.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Annotated

import typer

from pixbench import __version__
# The nouns, in --help order; importing one registers its commands.
from pixbench.cli import data, classify, mae, report, verify, gen, params, study  # noqa: F401,I001
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
    """Entry point: a user error (UserError, or a flag the parser refuses) becomes one line on
    stderr, `error: ...` naming the flag or file, and exit code 2; no usage box, no traceback."""
    from pixbench.tasks.signals import die_with_parent  # stdlib only: SIGTERM when the parent dies

    die_with_parent()
    debug = os.environ.get("PIXBENCH_DEBUG") == "1"
    try:
        code = app(standalone_mode=False, prog_name="pixbench")
    except typer.TyperException as exc:  # click's errors (typer vendors click)
        if type(exc).__name__ == "NoArgsIsHelpError":  # `pixbench vq`: the help is the answer
            _show_help(exc)
            sys.exit(exc.exit_code)
        if debug:
            raise
        sys.exit(_fail(_click_message(exc), exc.exit_code))
    except typer.Abort:
        sys.exit(_fail("aborted", 1))
    except UserError as exc:
        if debug:
            raise
        sys.exit(_fail(str(exc), exc.exit_code))
    except OSError as exc:  # a full disk wherever a write was not wrapped: one line, exit 2
        if debug or exc.errno not in DISK_FULL:
            raise
        sys.exit(_fail(f"{_written(exc)}: cannot write ({exc.strerror}); free space there and "
                       "run the same command again", UserError.exit_code))
    sys.exit(code if isinstance(code, int) else 0)


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
PATH_LOCALS = ("path", "filename", "file", "output_path", "dst", "target", "tmp")


def _written(exc: OSError) -> str:
    """The file a failed write was writing: the error's own filename, else the innermost
    frame's path-like local (a write() failing on an open file names none)."""
    if exc.filename:
        return str(exc.filename)
    tb, found = exc.__traceback__, None
    while tb is not None:
        local = tb.tb_frame.f_locals
        for name in PATH_LOCALS:
            if isinstance(local.get(name), (str, os.PathLike)):
                found = os.fspath(local[name])
                break
        tb = tb.tb_next
    return found or "a file"


def _show_help(exc) -> None:
    try:
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
    except ImportError:  # typer without rich
        exc.show()


def _click_message(exc) -> str:
    """click's message, prefixed by the command it refers to (`pixbench dit sample`)."""
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None and ctx.command_path else ""
    return where + exc.format_message()


def _fail(message: str, code: int) -> int:
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    return code
