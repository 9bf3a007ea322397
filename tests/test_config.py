"""params.yaml validation: a mistake is reported on the line that names the file, under the
dotted key of the field (all of them at once: test_params_layout.py), and no hyper-parameter has
a default the params file cannot show."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_params
from pixbench.config import Params, Profile, load_params, make_classify_spec, spec_diff
from pixbench.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_validate_and_profiles_are_paper_ready():
    params = load_params(REPO / "params.yaml")
    assert params.profile in params.profiles
    assert {"cifar100", "imagenet28"} <= set(params.profiles)
    assert params.profiles["cifar100"].data.image_size == 32
    assert params.profiles["imagenet28"].data.image_size == 28
    assert params.profiles["imagenet28"].classify.epochs == 300  # its one classify override
    assert params.profiles["imagenet28"].mae == params.profiles["cifar100"].mae  # the recipe


def test_no_hyper_parameter_has_a_hidden_default():
    """A default the params file cannot show is a hidden hyper-parameter (and DVC cannot track
    it): every field of a profile is required (an optional track is null when it is off),
    except a field added later whose null leaves old specs' digests as they were
    (schema.omit_when_null): the repo's params.yaml states each of those."""
    from pixbench.config.schema import omitted_when_null

    stated = (REPO / "params.yaml").read_text()

    def walk(model, where):
        for name, field in model.model_fields.items():
            key = f"{where}.{name}"
            if omitted_when_null(field):
                assert f"{name}:" in stated, f"{key}: params.yaml does not state it"
                continue
            assert field.is_required(), f"{key} has a default"
            for ann in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(ann, type) and issubclass(ann, Params.__mro__[1]) and \
                        key != "profile.locality.variants":  # a variant states what it replaces
                    walk(ann, key)
    walk(Profile, "profile")


def test_every_field_has_a_description():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, Params.__mro__[1]):
                walk(ann)
    walk(Params)


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p["profiles"]["tiny"]["classify"].update(lr=1), r"profiles.tiny.classify.lr: unknown key"),
    (lambda p: p["profiles"]["tiny"]["classify"].pop("pos_embed"), r"profiles.tiny.classify.pos_embed: Field required"),
    (lambda p: p["profiles"]["tiny"]["classify"].update(epochs="many"), r"classify.epochs: Input should be a valid integer"),
    (lambda p: p["sweep"].update(patches=[3]), r"sweep.patches \[3\] do not divide profiles.tiny.data.image_size=8"),
    (lambda p: p.update(profile="nope"), r"profile 'nope' is not one of profiles"),
    (lambda p: p["sweep"].update(sizes=["huge"]), r"sweep.sizes \['huge'\] are not known sizes"),
])
def test_a_bad_value_is_one_line_naming_file_and_key(tmp_path, tiny_params, mutate, message):
    mutate(tiny_params)
    path = write_params(tmp_path / "params.yaml", tiny_params)
    with pytest.raises(UserError, match=message) as exc:
        load_params(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_invalid_yaml_and_missing_file(tmp_path):
    (tmp_path / "p.yaml").write_text("profile: [unclosed\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_params(tmp_path / "p.yaml")
    with pytest.raises(UserError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")


def test_spec_digest_tracks_every_field(tmp_path, tiny_params):
    params = load_params(write_params(tmp_path / "p.yaml", tiny_params))
    a = make_classify_spec(params, size=None, patch=2, seed=0)
    assert a.run_id == "classify-xxs-p2-s0"
    b = make_classify_spec(params, size=None, patch=2, seed=1)
    assert a.digest() != b.digest()
    assert spec_diff(a.canonical(), b.canonical()) == ["seed: 0 -> 1"]
    with pytest.raises(UserError, match="--patch 3 does not divide"):
        make_classify_spec(params, size=None, patch=3, seed=0)


def test_locality_variant_overrides_only_its_fields(tmp_path, tiny_params):
    params = load_params(write_params(tmp_path / "p.yaml", tiny_params))
    base = make_classify_spec(params, size=None, patch=2, seed=0)
    shuffled = make_classify_spec(params, size=None, patch=2, seed=0, variant="shuffle")
    assert shuffled.run_id == "classify-xxs-p2-s0-shuffle"
    assert spec_diff(base.canonical(), shuffled.canonical()) == [
        "classify.permutation.kind: 'none' -> 'shuffle'", "variant: None -> 'shuffle'"]
    with pytest.raises(UserError, match="--variant 'nope' is not one of locality.variants"):
        make_classify_spec(params, size=None, patch=2, seed=0, variant="nope")
    tiny_params["locality"]["run"] = ["ghost"]
    with pytest.raises(UserError, match=r"locality.run \['ghost'\] are not in locality.variants"):
        load_params(write_params(tmp_path / "q.yaml", tiny_params))


def _keys(node) -> set:
    """Every key of a JSON tree, at any depth."""
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_a_null_min_steps_keeps_every_pinned_digest_and_a_set_one_changes_it():
    """classify.min_steps came after the default profile's runs: left null it is not in any
    canonical JSON or dump (tests/params_digests.json's spec pins hold), set it is."""
    import json

    import pixbench.config as config

    params = load_params(REPO / "params.yaml")
    pins = json.loads((REPO / "tests" / "params_digests.json").read_text())["pins"]
    specs = [(pin, getattr(config, pin["call"])(params, **pin["kwargs"]))
             for pin in pins if pin["call"] != "profile"]
    assert len(specs) > 50
    assert [pin["digest"] for pin, _ in specs] == [spec.digest() for _, spec in specs]
    assert all("min_steps" not in _keys(spec.canonical()) for _, spec in specs)
    for name, prof in params.profiles.items():  # the profile pins hash model_dump_json
        assert "min_steps" not in _keys(json.loads(prof.model_dump_json())), name
    for _, spec in specs:
        if hasattr(spec, "classify"):
            grown = spec.model_copy(update={"classify": spec.classify.model_copy(
                update={"min_steps": 400})})
            assert grown.digest() != spec.digest()
            assert spec_diff(spec.canonical(), grown.canonical()) == \
                ["classify.min_steps: None -> 400"]


def test_min_steps_is_read_from_a_profile_and_validated(tmp_path, tiny_params):
    """Absent: null (the recipe's epochs); a positive integer in a profile or recipe reaches
    the classify and MAE fine-tune specs; zero or a float is refused under its key."""
    from pixbench.config import make_mae_spec

    params = load_params(write_params(tmp_path / "a.yaml", tiny_params))
    assert params.active.classify.min_steps is None
    tiny_params["profiles"]["tiny"]["classify"]["min_steps"] = 400
    tiny_params["profiles"]["tiny"]["mae"]["finetune"]["min_steps"] = 300
    params = load_params(write_params(tmp_path / "b.yaml", tiny_params))
    assert make_classify_spec(params, size=None, patch=2, seed=0).classify.min_steps == 400
    spec = make_mae_spec(params, task="mae-finetune", size=None, patch=2, seed=0)
    assert spec.classify.min_steps == 300
    for bad, message in ((0, "greater than 0"), (2.5, "valid integer")):
        tiny_params["profiles"]["tiny"]["classify"]["min_steps"] = bad
        with pytest.raises(UserError, match=f"profiles.tiny.classify.min_steps: .*{message}"):
            load_params(write_params(tmp_path / "c.yaml", tiny_params))


def test_omit_when_null_drops_a_null_field_at_any_depth_and_only_then():
    from pydantic import Field

    from pixbench.config.schema import OMIT_WHEN_NULL, Digestible, Strict, omit_when_null

    class Inner(Strict):
        a: int = Field(description="kept")
        late: int | None = omit_when_null(description="added later")

    class Spec(Digestible):
        inner: Inner = Field(description="nested")
        late: str | None = omit_when_null(description="added later")

    old = Spec(inner=Inner(a=1))
    assert old.canonical() == {"inner": {"a": 1}} and old.model_dump() == {"inner": {"a": 1}}
    assert Spec.model_validate(old.canonical()) == old
    new = Spec(inner=Inner(a=1, late=3), late="x")
    assert new.canonical() == {"inner": {"a": 1, "late": 3}, "late": "x"}
    assert len({old.digest(), new.digest(), Spec(inner=Inner(a=1), late="x").digest()}) == 3
    with pytest.raises(TypeError, match=r"Bad.late: declare it with omit_when_null\(\)"):
        class Bad(Strict):  # the mark alone would promise a digest the dump does not keep
            late: int | None = Field(None, json_schema_extra=dict(OMIT_WHEN_NULL),
                                     description="marked by hand")
