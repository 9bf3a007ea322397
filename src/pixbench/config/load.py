"""Reading params.yaml: recipes written once, profiles that state only what differs.

params.yaml has a `recipes:` section shaped like a profile (data, classify, mae.*, gen.*) and a
`profiles:` section of overrides. A profile's part is its recipe with the profile's values
deep-merged on top (mappings merge key by key; any other value, null and lists included,
replaces). A recipe part may say `extends: <part>` to start from another recipe part (the
linear probe is the fine-tune recipe with a few changes). Profiles do not extend each other:
DVC could not track the parent's keys (see dvc.yaml).

Every part of every track a profile runs must be present in the profile, as `{}` when nothing
differs, because dvc.yaml tracks `profiles.<profile>.<part>` and DVC fails on a declared key
that is absent. A profile that omits a whole optional track (mae, gen) does not run it.

A profile's study: the top-level `sweep`, `mae_sweep`, `locality` and `gen_sweep` with the
profile's own values of those keys merged on top (the same rule); a track the profile does not
run has no sweep. The resolved top-level keys are the active profile's (Params.switch).

Every problem is reported at once, each under the dotted key of the value that causes it, in
the file as written (a profile's override, or the recipe it inherits). show.py prints the result.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from pydantic import ValidationError

from pixbench.config.params import STUDY_KEYS, Params, Profile
from pixbench.errors import UserError

PARTS = ("data", "classify", "mae.pretrain", "mae.finetune", "mae.linprobe", "gen.data",
         "gen.vq", "gen.latents", "gen.featnet", "gen.dit", "gen.sample", "gen.fid")
OPTIONAL_TRACKS = ("mae", "gen")
EXTENDS = "extends"


def deep_merge(base, over):
    """`over` onto `base`: mappings merge key by key, anything else replaces (null too)."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
    return out


def _get(tree, dotted: str):
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    for key in head:
        tree = tree[key]
    tree[last] = value


def recipe_chain(recipes: dict, part: str) -> list[str]:
    """The part, then the parts it extends, nearest first; stops before a link that is not a
    recipe part or closes a cycle (extends_problem names it)."""
    chain = [part]
    while True:
        node = _get(recipes, chain[-1])
        target = node.get(EXTENDS) if isinstance(node, dict) else None
        if target not in PARTS or not isinstance(_get(recipes, target), dict) or target in chain:
            return chain
        chain.append(target)


def extends_problem(recipes: dict, chain: list[str]) -> str | None:
    """Why the `extends` at the end of a chain is broken, or None when the chain is whole."""
    last = chain[-1]
    target = _get(recipes, last).get(EXTENDS)
    if target is None:
        return None
    key = f"recipes.{last}.{EXTENDS}"
    if target in chain:
        return f"{key}: the chain {' -> '.join(chain)} -> {target} is a cycle"
    return f"{key}: {target!r} is not a recipe part in recipes (one of {', '.join(PARTS)})"


def resolve_recipes(recipes: dict) -> tuple[dict, list[str], set[str]]:
    """Recipes with every `extends` applied, the problems of broken ones, and the parts they
    break (whose missing fields are not worth reporting on top)."""
    out, problems, broken = copy.deepcopy(recipes), [], set()
    for part in PARTS:
        node = _get(recipes, part)
        if not isinstance(node, dict) or EXTENDS not in node:
            continue
        chain = recipe_chain(recipes, part)
        bad = extends_problem(recipes, chain)
        if bad:
            problems.append(bad)
            broken.add(part)
        merged = {}
        for link in reversed(chain):
            merged = deep_merge(merged, {k: v for k, v in _get(recipes, link).items()
                                         if k != EXTENDS})
        _set(out, part, merged)
    return out, problems, broken


def missing_parts(name: str, over: dict) -> list[str]:
    """Parts a profile leaves out although it runs their track: DVC needs every one."""
    out, tracks = [], dict.fromkeys(p.split(".")[0] for p in PARTS)
    for track in tracks:
        subparts = [p.split(".", 1)[1] for p in PARTS if p.startswith(track + ".")]
        if track not in over:
            if track not in OPTIONAL_TRACKS:
                shown = "{" + ", ".join(f"{s}: {{}}" for s in subparts) + "}" if subparts else "{}"
                out.append(f"profiles.{name}.{track}: missing; write `{track}: {shown}` to take "
                           f"recipes.{track} as written (dvc.yaml tracks this key)")
            continue
        if not isinstance(over[track], dict):
            continue  # null turns an optional track off; anything else validation names
        out += [f"profiles.{name}.{track}.{sub}: missing; write `{sub}: {{}}` to take "
                f"recipes.{track}.{sub} as written (dvc.yaml tracks this key)"
                for sub in subparts if sub not in over[track]]
    return out


def merge_profile(recipes: dict, over: dict) -> dict:
    """One profile, resolved: recipes with its overrides; an omitted optional track is off."""
    merged = deep_merge(recipes, over)
    for track in OPTIONAL_TRACKS:
        if track not in over:
            merged[track] = None
    return merged


def _owns(tree, path: tuple) -> bool:
    """Whether `tree` (as written) sets the value at `path`: it has the key, or a value above
    it that is not a mapping (a list, a scalar, null) and so replaces everything below."""
    for key in path:
        if not isinstance(tree, dict):
            return True
        if key not in tree:
            return False
        tree = tree[key]
    return True


def _dotted(path) -> str:
    """('optim', 'betas', 1) -> 'optim.betas[1]'."""
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


class Source:
    """Where a resolved value was written: the profile's override or a recipe (through its
    `extends` chain). Names every problem by the key a user has to edit."""

    def __init__(self, recipes: dict | None, overrides: dict):
        self.recipes, self.overrides = recipes, overrides
        self.broken: set[str] = set()  # recipe parts whose `extends` chain is broken

    def follows_broken(self, problem: str) -> bool:
        """A missing field of a recipe part whose `extends` is broken: noise after the cause."""
        key = problem.split(": ", 1)[0]
        return any(key.startswith(f"recipes.{p}.") and key != f"recipes.{p}.{EXTENDS}"
                   for p in self.broken)

    def recipe_part(self, path: tuple) -> tuple[str | None, tuple]:
        """The recipe part that states the value at `path` (following `extends`), and the
        path below that part; (None, path) when no part does."""
        dotted = _dotted(path)
        part = next((p for p in PARTS if dotted == p or dotted.startswith(p + ".")), None)
        if part is not None and self.recipes is not None:
            tail = tuple(path[len(part.split(".")):])
            for link in recipe_chain(self.recipes, part):
                if _owns(_get(self.recipes, link), tail):
                    return link, tail
        return None, tuple(path)

    def recipe_key(self, path: tuple) -> str:
        part, tail = self.recipe_part(path)
        return _dotted(("recipes", *(part.split(".") if part else ()), *tail))

    def origin(self, profile: str, path: tuple) -> str:
        """Where a resolved value of a profile is stated: `profiles.P` or `recipes.<part>`."""
        if self.recipes is None or _owns(self.overrides.get(profile), tuple(path)):
            return f"profiles.{profile}"
        part, _ = self.recipe_part(path)
        return f"recipes.{part}" if part else "recipes"

    def key(self, loc: tuple) -> str:
        """The key to edit for a validation error at `loc` of the resolved params."""
        if len(loc) >= 2 and loc[0] == "profiles" and loc[1] in self.overrides:
            name, path = loc[1], tuple(loc[2:])
            if self.recipes is None or not path or _owns(self.overrides[name], path):
                return _dotted(loc)
            if path[0] in STUDY_KEYS:  # inherited from the top-level study key
                return _dotted(path)
            return self.recipe_key(path)
        return _dotted(loc)


def _problems(exc: ValidationError, where) -> list[str]:
    """One `key: message` per pydantic error; `where(loc)` names the key as written."""
    out = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        loc = tuple(err["loc"])
        if not loc:
            out += msg.splitlines()  # cross-section checks: each line names its own keys
        elif loc[-1] == "[key]":  # a mapping's key (a profile or variant name)
            out.append(f"{where(loc[:-2])}: key {msg}")
        else:
            out.append(f"{where(loc)}: {msg}")
    return out


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a params file")
    if not path.is_file():
        raise UserError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{path}: unreadable ({exc.strerror or exc.__class__.__name__})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{where}: invalid YAML") from None
    except RecursionError:  # deeply nested flow collections
        raise UserError(f"{path}: invalid YAML (nested too deeply)") from None
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{path}: the top level must be a mapping")
    return raw or {}


def resolve(raw: dict) -> tuple[dict, Source, list[str]]:
    """The params with every profile resolved, where each value came from, and the problems
    found before validation (broken `extends`, recipes that do not validate, missing parts)."""
    rest = {k: v for k, v in raw.items() if k != "recipes"}
    if isinstance(rest.get("profiles"), dict):
        rest["profiles"] = dict(rest["profiles"])  # resolved below, the raw one kept
    recipes, problems = raw.get("recipes"), []
    if recipes is not None and not isinstance(recipes, dict):
        problems.append("recipes: Input should be a mapping (one recipe per part)")
        recipes = None
    profiles = raw.get("profiles")
    overrides = profiles if isinstance(profiles, dict) else {}
    source = Source(recipes, overrides)
    if recipes is not None:
        full, bad, source.broken = resolve_recipes(recipes)
        problems += bad
        try:  # the recipes as a profile; the study keys are checked with each profile
            Profile.model_validate(merge_study(raw, copy.deepcopy(full), {}))
        except ValidationError as exc:
            problems += _problems(exc, lambda loc: source.recipe_key(tuple(loc)) if
                                  not loc or loc[0] not in STUDY_KEYS else _dotted(loc))
        for name, over in overrides.items():
            if isinstance(over, dict):  # anything else: validation names it
                problems += missing_parts(name, over)
                rest["profiles"][name] = merge_profile(full, over)
    for name, over in overrides.items():
        if isinstance(over, dict):
            prof = rest["profiles"][name] if recipes is not None else merge_profile({}, over)
            rest["profiles"][name] = merge_study(raw, prof, over)
    name, resolved = raw.get("profile"), rest.get("profiles")
    if isinstance(name, str):
        rest.setdefault("studies", [name])  # no `studies`: the active profile's alone
        if isinstance(resolved, dict) and isinstance(resolved.get(name), dict):
            rest.update({k: resolved[name].get(k) for k in STUDY_KEYS})
    return rest, source, problems


def merge_study(raw: dict, merged: dict, over: dict) -> dict:
    """A resolved profile with its study: each top-level study key with the profile's own
    value merged on top; no sweep for a track the profile does not run."""
    off = {"mae_sweep": "mae", "gen_sweep": "gen"}
    for key in STUDY_KEYS:
        if key in off and merged.get(off[key]) is None:
            merged[key] = None
        elif key in over:
            merged[key] = deep_merge(raw.get(key), over[key]) if over[key] is not None else None
        else:
            merged[key] = copy.deepcopy(raw.get(key))
    return merged


def load_with_source(path: Path | str = "params.yaml") -> tuple[Params, Source]:
    """The validated params and, for each value, where params.yaml states it."""
    path = Path(path)
    resolved, source, problems = resolve(_read_yaml(path))
    params = None
    try:
        if not problems or not problems[0].startswith("recipes: "):  # else all would follow
            params = Params.model_validate(resolved)
    except ValidationError as exc:
        problems += _problems(exc, source.key)
    problems = [p for p in dict.fromkeys(problems) if not source.follows_broken(p)]
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))
    return params, source


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read params.yaml, resolve every profile and validate; all problems at once, as one
    UserError whose message starts with the file name and names each problem's dotted key."""
    return load_with_source(path)[0]
