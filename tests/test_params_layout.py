"""params.yaml as recipes + profile overrides: the rewrite changed no run (digests pinned before
it), every value is stated once, one edit changes one value, every mistake is reported at once
under its full key, `params show` prints what a profile resolves to, and every key dvc.yaml
tracks exists in every profile that runs its track."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

import pixbench.config as config
from conftest import write_params
from pixbench.config import PARTS, deep_merge, load_params, show_params
from pixbench.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
PINS = json.loads((Path(__file__).with_name("params_digests.json")).read_text())["pins"]


def raw_params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def profile_digest(profile) -> str:
    import hashlib

    from pixbench.config.params import STUDY_KEYS

    # the recipe part of a profile (its study keys came later: a profile's own sweeps)
    blob = json.dumps(json.loads(profile.model_dump_json(exclude=set(STUDY_KEYS))),
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_specs_and_profiles_keep_their_digests():
    """Pinned from the old params.yaml: no run of the default profile is invalidated, and all
    three profiles resolve to exactly the values they had."""
    params = load_params(PARAMS)
    assert params.profile == "fmnist-cpu"
    changed = []
    for pin in PINS:
        if pin["call"] == "profile":
            got = profile_digest(params.profiles[pin["kwargs"]["name"]])
        else:
            got = getattr(config, pin["call"])(params, **pin["kwargs"]).digest()
        if got != pin["digest"]:
            changed.append(f"{pin['call']}({pin['kwargs']}): {pin['digest']} -> {got}")
    assert not changed, "\n".join(changed)
    assert len(PINS) > 80


def count_values(node) -> int:
    """YAML leaf scalars, a list counted as one value (as the 514 of the old layout)."""
    if isinstance(node, dict):
        return sum(count_values(v) for v in node.values())
    return 1


def test_fewer_than_320_values_state_the_three_profiles():
    raw = raw_params()
    assert set(raw["profiles"]) == {"fmnist-cpu", "cifar100", "imagenet28"}
    assert count_values(raw) < 320  # 300 until verify's alpha and sanity bands (issue 23)
    assert count_values({"recipes": raw["recipes"], "profiles": raw["profiles"]}) < 280


def flat(node, prefix=""):
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


@pytest.mark.parametrize("edit, key, value", [
    (lambda r: r["profiles"]["imagenet28"]["classify"].update(epochs=10),
     "profiles.imagenet28.classify.epochs", 10),
    (lambda r: r["profiles"]["cifar100"]["mae"]["linprobe"].update(epochs=50),
     "profiles.cifar100.mae.linprobe.epochs", 50),
])
def test_one_edit_changes_one_value_of_one_profile(tmp_path, edit, key, value):
    before = flat(load_params(PARAMS).model_dump(mode="json"))
    raw = raw_params()
    edit(raw)
    after = flat(load_params(write_params(tmp_path / "p.yaml", raw)).model_dump(mode="json"))
    assert {k for k in after if after[k] != before[k]} == {key} and after[key] == value


def problems_of(tmp_path, raw) -> str:
    path = write_params(tmp_path / "params.yaml", raw)
    with pytest.raises(UserError) as exc:
        load_params(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ")
    return message


def test_every_problem_is_reported_at_once_under_its_full_key(tmp_path):
    raw = raw_params()
    raw["profiles"]["cifar100"]["classify"]["optim"] = {"lr": 0}
    raw["recipes"]["classify"]["epochs"] = "many"
    raw["profiles"]["imagenet28"]["mae"]["finetune"]["drop_path"] = 1.5
    raw["recipes"]["gen"]["fid"].pop("inception")
    message = problems_of(tmp_path, raw)
    for expected in [
        "profiles.cifar100.classify.optim.lr: Input should be greater than 0",
        "recipes.classify.epochs: Input should be a valid integer",
        "profiles.imagenet28.mae.finetune.drop_path: Input should be less than 1",
        "recipes.gen.fid.inception: Field required",
    ]:
        assert expected in message, message
    assert message.count("recipes.classify.epochs") == 1  # once, not once per profile


def test_a_typo_in_a_profile_is_named_with_its_full_key(tmp_path):
    raw = raw_params()
    raw["profiles"]["fmnist-cpu"]["gen"]["dit"]["optim"]["lrr"] = 0.1
    raw["profiles"]["imagenet28"]["clasify"] = {"epochs": 3}
    message = problems_of(tmp_path, raw)
    assert "profiles.fmnist-cpu.gen.dit.optim.lrr: unknown key" in message
    assert "profiles.imagenet28.clasify: unknown key" in message


def test_a_part_left_out_of_a_profile_asks_for_its_placeholder(tmp_path):
    raw = raw_params()
    del raw["profiles"]["cifar100"]["mae"]["linprobe"]
    message = problems_of(tmp_path, raw)
    assert "profiles.cifar100.mae.linprobe: missing; write `linprobe: {}`" in message


def test_a_profile_without_gen_validates_and_says_so(tmp_path):
    raw = raw_params()
    del raw["profiles"]["cifar100"]["gen"]
    path = write_params(tmp_path / "p.yaml", raw)
    params = load_params(path)
    assert params.profiles["cifar100"].gen is None and params.profiles["imagenet28"].gen
    with pytest.raises(UserError, match="profile 'cifar100' has no gen track"):
        config.make_vq_spec(params.model_copy(update={"profile": "cifar100"}))
    assert "gen: null  # <- profiles.cifar100 (no gen track)" in show_params(path, "cifar100")


def test_show_params_prints_the_resolved_recipe_with_overrides_marked():
    out = show_params(PARAMS, "imagenet28", "classify")
    shown = yaml.safe_load(out)["classify"]
    recipe = raw_params()["recipes"]["classify"]
    assert shown["epochs"] == 300 and shown["optim"]["lr"] == recipe["optim"]["lr"]
    assert re.search(r"^  epochs: 300  # <- profiles.imagenet28$", out, re.M)
    assert re.search(r"^  batch_size: 1024$", out, re.M)  # the recipe's, unmarked
    probe = show_params(PARAMS, None, "mae.linprobe")
    assert re.search(r"^    pool: avg  # <- recipes.mae.finetune$", probe, re.M)
    assert yaml.safe_load(probe)["mae"]["linprobe"]["optim"]["lr"] == 0.04  # fmnist-cpu's
    params = load_params(PARAMS)
    for name, prof in params.profiles.items():
        assert yaml.safe_load(show_params(PARAMS, name)) == prof.model_dump(mode="json")


def test_show_params_rejects_unknown_profiles_and_tracks():
    with pytest.raises(UserError, match=r"--profile 'nope' is not one of"):
        show_params(PARAMS, "nope")
    with pytest.raises(UserError, match=r"has no mae.lin \(there: pretrain, finetune, linprobe\)"):
        show_params(PARAMS, None, "mae.lin")


def test_pixbench_params_show_prints_it():
    from typer.testing import CliRunner

    from pixbench.cli import app

    result = CliRunner().invoke(app, ["params", "show", "--params", str(PARAMS), "--profile",
                                      "imagenet28", "--track", "data"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == {"data": {
        "source": "imagefolder", "image_size": 28, "root": "imagenet", "allow_download": False,
        "skip_corrupt": False, "channels": "auto", "fast_decode": 2.0}}


def test_the_linear_probe_recipe_extends_the_fine_tune_recipe(tmp_path):
    recipes = raw_params()["recipes"]
    assert recipes["mae"]["linprobe"]["extends"] == "mae.finetune"
    resolved = load_params(PARAMS).profiles["cifar100"].mae  # cifar100: the recipes as written
    own = {k: v for k, v in recipes["mae"]["linprobe"].items() if k != "extends"}
    assert resolved.linprobe.model_dump(mode="json") == \
        deep_merge(resolved.finetune.model_dump(mode="json"), own)
    raw = raw_params()
    raw["recipes"]["mae"]["linprobe"]["extends"] = "mae.finetun"
    message = problems_of(tmp_path, raw)
    assert "recipes.mae.linprobe.extends: 'mae.finetun' is not a recipe part" in message
    assert "Field required" not in message  # the cause, not its consequences


def test_deep_merge_merges_mappings_and_replaces_everything_else():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": {"e": 1}, "f": 2}
    assert deep_merge(base, {"a": {"c": [3]}, "d": None, "g": {}}) == \
        {"a": {"b": 1, "c": [3]}, "d": None, "f": 2, "g": {}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": {"e": 1}, "f": 2}  # untouched


def dvc_params() -> dict[str, list[str]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("params", []) for name, stage in stages.items()}


def has_key(tree, dotted: str) -> bool:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def test_every_key_dvc_tracks_exists_in_every_profile_that_runs_it():
    """DVC fails on a tracked key that is absent (MissingParamsError), so each stage's recipe
    and profile keys must exist for every profile whose tracks it runs."""
    raw, missing = raw_params(), []
    for stage, keys in dvc_params().items():
        for name, over in raw["profiles"].items():
            for key in keys:
                key = key.replace("${profile}", name)
                if ".gen" in key and "gen" not in over:
                    continue  # a profile without the gen track does not run gen stages
                for variant in (raw["locality"]["run"] if "${item.variant}" in key else [None]):
                    k = key.replace("${item.variant}", str(variant))
                    if not has_key(raw, k):
                        missing.append(f"{stage}: {k}")
    assert not missing, missing


def test_each_stage_tracks_the_recipe_and_the_override_of_every_part_it_reads():
    recipes = raw_params()["recipes"]
    for stage, keys in dvc_params().items():
        parts = {k.removeprefix("profiles.${profile}.") for k in keys
                 if k.startswith("profiles.${profile}.")}
        tracked = {k.removeprefix("recipes.") for k in keys if k.startswith("recipes.")}
        for part in parts:
            assert any(t == part or t.startswith(part + ".") for t in tracked), (stage, part)
        for part in tracked & set(PARTS):
            parent = recipes_extends(recipes, part)
            assert parent is None or parent in tracked, (stage, part, parent)


def recipes_extends(recipes: dict, part: str) -> str | None:
    node = recipes
    for key in part.split("."):
        node = node[key]
    return node.get("extends")


def test_the_old_layout_without_recipes_still_loads(tmp_path, tiny_params):
    """A params file whose profiles state everything (the test fixtures) needs no recipes."""
    params = load_params(write_params(tmp_path / "p.yaml", copy.deepcopy(tiny_params)))
    assert params.active.classify.epochs == 2
