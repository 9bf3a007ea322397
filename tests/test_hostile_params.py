"""Hostile params files: each bad value, shape or file is refused before any work, with exit
code 2 and one line on stderr naming the full dotted key (or the file), nothing written.

Each case goes through tests/hostile.py's `assert_refused` with a real CLI command."""

from __future__ import annotations

import math

import pytest
import yaml

from hostile import assert_refused

DROP = object()  # delete the key instead of setting it
RUN = ["classify", "run", "--patch", "2", "--device", "cpu"]
GEN_RUN = ["dit", "train", "--patch", "2", "--device", "cpu"]
T = "profiles.tiny"
C = f"{T}.classify"
G = f"{T}.gen"
INF, NAN = math.inf, math.nan


def mutate(raw: dict, dotted: str | tuple, value) -> None:
    """Set (or with DROP delete) `a.b[1].c`-style keys of the raw params (a tuple: the keys
    themselves, for keys with dots), creating mappings."""
    keys = list(dotted) if isinstance(dotted, tuple) else [
        int(k) if k.isdigit() else k for k in dotted.replace("[", ".").replace("]", "").split(".")]
    node = raw
    for key in keys[:-1]:
        node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
    if value is DROP:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value


# (id, edits {dotted key: value}, what the error line must name); the key named is the one set
VALUES = [
    # inf / nan wherever a finite number is required
    ("lr-inf", {f"{C}.optim.lr": INF}, f"{C}.optim.lr"),
    ("lr-nan", {f"{C}.optim.lr": NAN}, f"{C}.optim.lr"),
    ("lr-minus-inf", {f"{C}.optim.lr": -INF}, f"{C}.optim.lr"),
    ("weight-decay-inf", {f"{C}.optim.weight_decay": INF}, f"{C}.optim.weight_decay"),
    ("weight-decay-nan", {f"{C}.optim.weight_decay": NAN}, f"{C}.optim.weight_decay"),
    ("warmup-inf", {f"{C}.optim.warmup_epochs": INF}, f"{C}.optim.warmup_epochs"),
    ("grad-clip-nan", {f"{C}.optim.grad_clip": NAN}, f"{C}.optim.grad_clip"),
    ("betas-nan", {f"{C}.optim.betas": [0.9, NAN]}, f"{C}.optim.betas[1]"),
    ("label-smoothing-nan", {f"{C}.label_smoothing": NAN}, f"{C}.label_smoothing"),
    ("drop-path-nan", {f"{C}.drop_path": NAN}, f"{C}.drop_path"),
    ("checkpoint-every-inf", {f"{C}.checkpoint_every_s": INF}, f"{C}.checkpoint_every_s"),
    ("color-jitter-nan", {f"{C}.augment.color_jitter": NAN}, f"{C}.augment.color_jitter"),
    ("rrc-scale-inf", {f"{C}.augment.rrc_scale_min": INF}, f"{C}.augment.rrc_scale_min"),
    ("mask-ratio-nan", {f"{T}.mae.pretrain.mask_ratio": NAN}, f"{T}.mae.pretrain.mask_ratio"),
    ("mae-lr-inf", {f"{T}.mae.pretrain.optim.lr": INF}, f"{T}.mae.pretrain.optim.lr"),
    ("finetune-wd-nan", {f"{T}.mae.finetune.optim.weight_decay": NAN},
     f"{T}.mae.finetune.optim.weight_decay"),
    # wrong types (no silent coercion of bools, strings or fractions)
    ("epochs-text", {f"{C}.epochs": "two"}, f"{C}.epochs"),
    ("epochs-bool", {f"{C}.epochs": True}, f"{C}.epochs"),
    ("epochs-fraction", {f"{C}.epochs": 2.5}, f"{C}.epochs"),
    ("batch-size-string", {f"{C}.batch_size": "32"}, f"{C}.batch_size"),
    ("lr-string", {f"{C}.optim.lr": "fast"}, f"{C}.optim.lr"),
    ("hflip-string", {f"{C}.augment.hflip": "yes"}, f"{C}.augment.hflip"),
    ("hflip-int", {f"{C}.augment.hflip": 1}, f"{C}.augment.hflip"),
    ("betas-short", {f"{C}.optim.betas": [0.9]}, f"{C}.optim.betas"),
    ("betas-scalar", {f"{C}.optim.betas": 0.9}, f"{C}.optim.betas"),
    ("optim-list", {f"{C}.optim": []}, f"{C}.optim"),
    ("classify-null", {f"{C}": None}, C),
    ("image-size-string", {f"{T}.data.image_size": "8"}, f"{T}.data.image_size"),
    ("pool-unknown", {f"{C}.pool": "max"}, f"{C}.pool"),
    ("precision-fp16", {f"{C}.precision": "fp16"}, f"{C}.precision"),
    ("source-unknown", {f"{T}.data.source": "imagenet21k"}, f"{T}.data.source"),
    ("sweep-patches-text", {"sweep.patches": ["two"]}, "sweep.patches[0]"),
    # negative / zero / out of range
    ("epochs-negative", {f"{C}.epochs": -1}, f"{C}.epochs"),
    ("epochs-zero", {f"{C}.epochs": 0}, f"{C}.epochs"),
    ("batch-size-zero", {f"{C}.batch_size": 0}, f"{C}.batch_size"),
    ("batch-size-negative", {f"{C}.batch_size": -32}, f"{C}.batch_size"),
    ("lr-zero", {f"{C}.optim.lr": 0}, f"{C}.optim.lr"),
    ("lr-negative", {f"{C}.optim.lr": -0.1}, f"{C}.optim.lr"),
    ("weight-decay-negative", {f"{C}.optim.weight_decay": -0.1}, f"{C}.optim.weight_decay"),
    ("train-subset-zero", {f"{C}.train_subset": 0}, f"{C}.train_subset"),
    ("distance-zero", {f"{C}.permutation.distance": 0}, f"{C}.permutation.distance"),
    ("image-size-tiny", {f"{T}.data.image_size": 2}, f"{T}.data.image_size"),
    ("mask-ratio-one", {f"{T}.mae.pretrain.mask_ratio": 1.0}, f"{T}.mae.pretrain.mask_ratio"),
    # seeds: 0 <= seed < 2**31
    ("sweep-seed-negative", {"sweep.seeds": [-1]}, "sweep.seeds[0]"),
    ("sweep-seed-2**31", {"sweep.seeds": [0, 2**31]}, "sweep.seeds[1]"),
    ("locality-seed-huge", {"locality.seeds": [10**20]}, "locality.seeds[0]"),
    ("permutation-seed-negative", {f"{C}.permutation.seed": -5}, f"{C}.permutation.seed"),
    ("mae-seed-float", {"mae_sweep.seeds": [1.5]}, "mae_sweep.seeds[0]"),
    # names that become paths
    ("profile-traversal", {"profile": "../tiny"}, "profile"),
    ("profile-slash", {"profile": "a/b"}, "profile"),
    ("profile-unknown", {"profile": "other"}, "profile 'other'"),
    ("profile-null", {"profile": None}, "profile"),
    ("profiles-key-slash", {"profiles.a/b": {}}, "profiles: key"),
    ("profiles-key-dotdot", {("profiles", ".."): {}}, "profiles: key '..'"),
    ("profiles-key-html", {"profiles.<script>": {}}, "profiles: key"),
    ("variant-key-traversal", {("locality", "variants", "../x"): {"pos_embed": "none"}},
     "locality.variants: key '../x'"),
    ("variant-key-absolute", {"locality.variants./etc": {"pos_embed": "none"}},
     "locality.variants: key"),
    ("locality-run-traversal", {"locality.run": ["../x"]}, "locality.run[0]"),
    ("locality-run-unknown", {"locality.run": ["nope"]}, "locality.run"),
    ("sweep-size-traversal", {"sweep.sizes": ["../x"]}, "sweep.sizes[0]"),
    ("sweep-size-unknown", {"sweep.sizes": ["huge"]}, "sweep.sizes"),
    # shapes and sections
    ("unknown-top-key", {"sweeps": {}}, "sweeps"),
    ("unknown-classify-key", {f"{C}.epoch": 3}, f"{C}.epoch"),
    ("profiles-list", {"profiles": []}, "profiles"),
    ("profile-without-classify", {C: DROP}, C),
    ("missing-optim-field", {f"{C}.optim.lr": DROP}, f"{C}.optim.lr"),
    ("recipes-string", {"recipes": "all of them"}, "recipes"),
    ("recipes-extends-unknown", {"recipes.classify": {"extends": "nope"}},
     "recipes.classify.extends"),
    ("sweep-missing", {"sweep": DROP}, "sweep"),
    ("sweep-patches-empty", {"sweep.patches": []}, "sweep.patches"),
    ("sweep-patch-not-dividing", {"sweep.patches": [3]}, "sweep.patches [3]"),
    ("sweep-patch-zero", {"sweep.patches": [0]}, "sweep.patches [0]"),
    ("mae-patch-single-token", {"mae_sweep.patches": [8]}, "mae_sweep.patches [8]"),
]

GEN_VALUES = [
    ("vq-downsample-3", {f"{G}.vq.downsample": 3}, f"{G}.vq.downsample"),
    ("vq-lr-inf", {f"{G}.vq.lr": INF}, f"{G}.vq.lr"),
    ("dit-ema-nan", {f"{G}.dit.ema_decay": NAN}, f"{G}.dit.ema_decay"),
    ("dit-lr-nan", {f"{G}.dit.optim.lr": NAN}, f"{G}.dit.optim.lr"),
    ("sample-eta-inf", {f"{G}.sample.eta": INF}, f"{G}.sample.eta"),
    ("cfg-scale-nan", {f"{G}.sample.cfg_scale": NAN}, f"{G}.sample.cfg_scale"),
    ("ddim-steps-not-dividing", {f"{G}.sample.steps": 7}, f"{G}.sample.steps"),
    ("kid-subset-too-large", {f"{G}.fid.kid_subset_size": 64}, f"{G}.fid.kid_subset_size"),
    ("gen-sweep-size-unknown", {"gen_sweep.sizes": ["huge"]}, "gen_sweep.sizes"),
    ("gen-sweep-size-traversal", {"gen_sweep.sizes": ["../x"]}, "gen_sweep.sizes[0]"),
    ("tokenizer-seed-negative", {"gen_sweep.tokenizer_seed": -1}, "gen_sweep.tokenizer_seed"),
    ("pretrained-format", {f"{G}.vq.pretrained": {"path": "x.ckpt", "format": "pickle",
                                              "root": "data", "sha256": None}},
     f"{G}.vq.pretrained.format"),
    ("vq-batch-bool", {f"{G}.vq.batch_size": True}, f"{G}.vq.batch_size"),
    ("featnet-epochs-negative", {f"{G}.featnet.epochs": -2}, f"{G}.featnet.epochs"),
]


@pytest.mark.parametrize("edits, names", [c[1:] for c in VALUES], ids=[c[0] for c in VALUES])
def test_bad_value_is_refused(tiny_project, edits, names, monkeypatch, capsys):
    raw = yaml.safe_load(tiny_project.read_text())
    for key, value in edits.items():
        mutate(raw, key, value)
    tiny_project.write_text(yaml.safe_dump(raw, sort_keys=False))
    line = assert_refused(RUN, names, tiny_project.parent, monkeypatch, capsys)
    assert line.startswith(f"error: {tiny_project.name}: ") or "params.yaml" in line


@pytest.mark.parametrize("edits, names", [c[1:] for c in GEN_VALUES],
                         ids=[c[0] for c in GEN_VALUES])
def test_bad_gen_value_is_refused(gen_project, edits, names, monkeypatch, capsys):
    raw = yaml.safe_load(gen_project.read_text())
    for key, value in edits.items():
        mutate(raw, key, value)
    gen_project.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert_refused(GEN_RUN, names, gen_project.parent, monkeypatch, capsys)


# (id, bytes of params.yaml or a callable making the path, what the line must name)
FILES = [
    ("non-utf8", b"profile: tiny\nsweep: \xff\xfe\n", "not UTF-8"),
    ("latin1-comment", "# caf\xe9\nprofile: tiny\n".encode("latin-1"), "not UTF-8"),
    ("top-level-list", b"- profile\n- tiny\n", "the top level must be a mapping"),
    ("top-level-scalar", b"tiny\n", "the top level must be a mapping"),
    ("invalid-yaml", b"profile: [tiny\n", "invalid YAML"),
    ("tab-indent", b"profile: tiny\nsweep:\n\tsizes: [xxs]\n", "invalid YAML"),
    ("empty", b"", "profile"),
    ("null", b"null\n", "profile"),
    ("python-tag", b"profile: !!python/object/apply:os.system ['touch PWNED']\n", "invalid YAML"),
]


@pytest.mark.parametrize("content, names", [c[1:] for c in FILES], ids=[c[0] for c in FILES])
def test_bad_params_file_is_refused(tiny_project, content, names, monkeypatch, capsys):
    tiny_project.write_bytes(content)
    line = assert_refused(RUN, names, tiny_project.parent, monkeypatch, capsys)
    assert "params.yaml" in line
    assert not (tiny_project.parent / "PWNED").exists()


def test_params_path_that_is_a_directory(tiny_project, monkeypatch, capsys):
    (tiny_project.parent / "p.yaml").mkdir()
    assert_refused([*RUN, "--params", "p.yaml"], "p.yaml: is a directory", tiny_project.parent,
                   monkeypatch, capsys)


def test_every_problem_is_named_at_once(tiny_project, monkeypatch, capsys):
    raw = yaml.safe_load(tiny_project.read_text())
    mutate(raw, f"{C}.optim.lr", INF)
    mutate(raw, f"{C}.epochs", -1)
    mutate(raw, "sweep.seeds", [-1])
    tiny_project.write_text(yaml.safe_dump(raw))
    line = assert_refused(RUN, f"{C}.optim.lr", tiny_project.parent, monkeypatch, capsys)
    assert f"{C}.epochs" in line and "sweep.seeds[0]" in line
