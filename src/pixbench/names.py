"""Names that become path components (profiles, locality variants, size keys, run ids, cluster
profiles, study ids, report figures): one rule, checked before any path is built from them.

A base module (no pixbench imports but errors) so that the config, the cluster profiles and
the CLI share the rule without importing each other.
"""

from __future__ import annotations

import re

from pixbench.errors import UserError

# A letter or digit, then letters, digits, `_`, `.`, `-`; never `..`.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_RULE = ("letters, digits, _ . - only, starting with a letter or digit, no '..', at most "
             "128 characters")


def name_problem(value) -> str | None:
    """Why `value` cannot be a path component, or None when it can."""
    if not isinstance(value, str):
        return f"{value!r} is not a string"
    if not NAME_RE.fullmatch(value) or ".." in value or len(value) > 128:
        return f"{value!r} is not a safe name ({NAME_RULE})"
    return None


def check_name(value: str, what: str) -> str:
    """`value` when it is a safe name; else a UserError naming `what` (a flag or a key)."""
    problem = name_problem(value)
    if problem:
        raise UserError(f"{what}: {problem}")
    return value
