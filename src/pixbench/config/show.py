"""`pixbench params show`: a profile's resolved recipe as YAML, each value that does not come
from its own recipe part marked with where it does come from, so a reader sees what a profile
changes without diffing files by eye.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pixbench.config.load import PARTS, Source, load_with_source
from pixbench.errors import UserError


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip() \
        .removesuffix("...").strip()


def _emit(node: dict, path: tuple, note, depth: int = 0) -> list[str]:
    """Block YAML for nested mappings, lists in flow style, `# <- source` after a leaf whose
    source `note(path)` names."""
    out, pad = [], "  " * depth
    for key, value in node.items():
        here = (*path, key)
        if isinstance(value, dict) and value:
            out.append(f"{pad}{key}:")
            out += _emit(value, here, note, depth + 1)
            continue
        text = f"{pad}{key}: {_scalar(value)}"
        where = note(here)
        out.append(f"{text}  # <- {where}" if where else text)
    return out


def _note(source: Source, profile: str):
    """A leaf's origin when it is not the leaf's own recipe part (a profile override, or a
    recipe part it extends); None otherwise."""
    def note(path: tuple) -> str | None:
        own = _own_part(path)
        if own is None:  # above every part: only `gen: null`, a profile without that track
            return f"profiles.{profile} (no {'.'.join(path)} track)"
        where = source.origin(profile, path)
        if source.recipes is None or where == f"recipes.{own}":
            return None
        return where
    return note


def _own_part(path: tuple) -> str | None:
    dotted = ".".join(str(k) for k in path)
    return next((p for p in PARTS if dotted == p or dotted.startswith(p + ".")), None)


def show_params(params_path: Path | str = "params.yaml", profile: str | None = None,
                track: str | None = None) -> str:
    """A profile's resolved recipe as YAML: what its runs use, recipes with its overrides
    merged. `profile`: default the file's `profile`; `track`: data, classify, mae, gen, or a
    dotted part below one (mae.pretrain, gen.vq, classify.optim)."""
    params, source = load_with_source(params_path)
    name = profile or params.profile
    if name not in params.profiles:
        raise UserError(f"--profile {name!r} is not one of {params_path}: profiles "
                        f"({', '.join(params.profiles)})")
    node = params.profiles[name].model_dump(mode="json")
    keys = track.split(".") if track else []
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            have = ", ".join(node) if isinstance(node, dict) else "nothing below it"
            raise UserError(f"--track {track!r}: profile {name} has no "
                            f"{'.'.join(keys[:i + 1])} (there: {have})")
        node = node[key]
    for key in reversed(keys):
        node = {key: node}
    head = [f"# {params_path}, profile {name}" + (f", {track}" if track else "") +
            f": recipes merged with profiles.{name}",
            "# (`# <- X`: the value is stated in X, not in its own recipe part)"]
    return "\n".join([*head, *_emit(node, (), _note(source, name))]) + "\n"
