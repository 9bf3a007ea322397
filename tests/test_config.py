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
    it): every field of a profile is required, except the optional gen track itself."""
    def walk(model, where):
        for name, field in model.model_fields.items():
            key = f"{where}.{name}"
            if key != "profile.gen":
                assert field.is_required(), f"{key} has a default"
            for ann in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(ann, type) and issubclass(ann, Params.__mro__[1]):
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
