"""Errors a user can cause: printed as one line naming the field or file, exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in input (params, data, checkpoint, flags) that the user can fix.

    The CLI prints `error: <message>` on one line and exits with code 2; the traceback is shown
    only when PIXBENCH_DEBUG=1.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line
