"""Nothing a user can be handed executes code: every torch file pixbench reads (ckpt/last.pt,
encoder.pt, ema.pt, featnet weights, a taming/LDM tokenizer, Inception weights) is read without
running the pickle's code. A crafted file whose unpickling would create a marker file is refused
with one line naming the file, and the marker never appears. Also: names never leave their root
(under_root) and report.html shows params/metrics text as text."""

from __future__ import annotations

import argparse
import builtins
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hostile import assert_refused, run_cli
from pixbench.errors import UserError


class Boom:
    """Unpickling this calls builtins.open(MARKER, "w"): creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def crafted(path: Path, marker: Path, wrap=lambda boom: {"state_dict": {"w": boom}}) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(Boom(marker)), path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def refused(fn, path: Path, marker: Path) -> None:
    with pytest.raises(UserError) as exc:
        fn(path)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg, msg
    assert not marker.exists(), "the crafted pickle ran"


# ------------------------------------------------------------------ each loader, directly


def test_load_checkpoint_refuses_code(tmp_path, marker):
    from pixbench.runio import load_checkpoint

    refused(load_checkpoint, crafted(tmp_path / "ckpt" / "last.pt", marker), marker)


def test_featnet_weights_refuse_code(tmp_path, marker):
    from pixbench.eval.fidelity import featnet_meta, load_featnet

    path = crafted(tmp_path / "featnet.pt", marker)
    refused(load_featnet, path, marker)
    refused(featnet_meta, path, marker)


def test_ema_weights_refuse_code(workdir, marker):
    from pixbench.config import Paths
    from pixbench.tasks.gen.sampling import load_ema

    path = crafted(workdir / "runs" / "tiny" / "dit-xxs-p2-s0" / "ema.pt", marker)
    refused(lambda _: load_ema(Paths(), "tiny", {"run_id": "dit-xxs-p2-s0", "digest": "x"}),
            path, marker)


@pytest.mark.parametrize("wrap", [lambda b: {"state_dict": {"w": b}}, lambda b: b,
                                  lambda b: {"callbacks": {"cb": b}, "state_dict": {}}],
                         ids=["in-state-dict", "top-level", "in-metadata"])
def test_taming_checkpoint_refuses_code(tmp_path, marker, wrap):
    from pixbench.models.taming import vqmodel_from_taming

    refused(vqmodel_from_taming, crafted(tmp_path / "last.ckpt", marker, wrap), marker)


def test_inception_weights_refuse_code(tmp_path, marker):
    from pixbench.eval.fidelity import _inception_extractor_class, fidelity_metrics

    path = crafted(tmp_path / "inception.pth", marker, wrap=lambda b: {"fc.weight": b})
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    refused(lambda p: fidelity_metrics(images, images, extractor="inception", weights_path=p,
                                       ref_cache_name=None, cache_root=None, kid=False), path,
            marker)
    refused(lambda p: _inception_extractor_class()("x", ["2048"],
                                                   feature_extractor_weights_path=str(p)),
            path, marker)


def test_restore_refuses_a_crafted_last_pt(workdir, marker, tiny_params):
    from pixbench.config import Paths, load_params, make_classify_spec
    from pixbench.tasks.runner import Run
    from conftest import write_params

    params = load_params(write_params(workdir / "params.yaml", tiny_params))
    spec = make_classify_spec(params, size=None, patch=2, seed=0)
    run = Run(spec, Paths(), torch.device("cpu"), 60.0)
    crafted(run.ckpt_path, marker)
    refused(lambda _: run.restore(model=torch.nn.Linear(1, 1)), run.ckpt_path, marker)


# ------------------------------------------------------------------ through the CLI


def test_cli_crafted_encoder_pt(tiny_project, marker, monkeypatch, capsys):
    """`mae finetune` loads the pre-training run's encoder.pt before it writes anything."""
    enc = crafted(tiny_project.parent / "runs/tiny/mae-pretrain-xxs-p2-s0/encoder.pt", marker)
    assert_refused(["mae", "finetune", "--patch", "2", "--device", "cpu"], str(enc),
                   tiny_project.parent, monkeypatch, capsys)
    assert not marker.exists()


def test_cli_crafted_ema_pt(gen_project, marker, monkeypatch, capsys):
    ema = crafted(gen_project.parent / "runs/tiny/dit-xxs-p2-s0/ema.pt", marker)
    assert_refused(["dit", "sample", "--patch", "2", "--out", "grid.png"], str(ema),
                   gen_project.parent, monkeypatch, capsys)
    assert not marker.exists()


def test_cli_crafted_taming_tokenizer(gen_project, marker, monkeypatch, capsys):
    ckpt = crafted(gen_project.parent / "vq.ckpt", marker)
    raw = yaml.safe_load(gen_project.read_text())
    raw["profiles"]["tiny"]["gen"]["vq"]["pretrained"] = {"path": str(ckpt), "format": "taming",
                                                     "root": "data", "sha256": None}
    gen_project.write_text(yaml.safe_dump(raw))
    assert_refused(["vq", "train", "--device", "cpu"], str(ckpt), gen_project.parent,
                   monkeypatch, capsys)
    assert not marker.exists()


def test_cli_crafted_last_pt(tiny_project, marker, monkeypatch, capsys):
    """A resumable run dir (spec.json of this very spec) whose ckpt/last.pt is crafted. The run
    writes spec.json/manifest.json before it restores (the runner's order), so this checks the
    refusal and the marker, not the no-write rule."""
    from pixbench.config import load_params, make_classify_spec

    spec = make_classify_spec(load_params(tiny_project), size=None, patch=2, seed=0)
    run_dir = tiny_project.parent / "runs" / "tiny" / spec.run_id
    crafted(run_dir / "ckpt" / "last.pt", marker)
    (run_dir / "spec.json").write_text(json.dumps({"digest": spec.digest(),
                                                   "spec": spec.canonical()}))
    code, _, err = run_cli(["classify", "run", "--patch", "2", "--device", "cpu"], monkeypatch,
                           capsys)
    assert code == 2 and err.count("\n") == 1 and "ckpt/last.pt" in err, err
    assert "Traceback" not in err and not marker.exists()


# ------------------------------------------------------------------ a real LDM checkpoint


def _fake_lightning_modules(marker: Path) -> dict[str, types.ModuleType]:
    """Stand-ins for pytorch_lightning and omegaconf, whose objects would create the marker if
    the loader ever ran their code (it must read them as inert metadata)."""

    class ModelCheckpoint:
        def __setstate__(self, state):
            Path(marker).write_text("ModelCheckpoint ran")

    class DictConfig:
        def __init__(self, content):
            self.content = content

        def __setstate__(self, state):
            Path(marker).write_text("DictConfig ran")

    mods = {name: types.ModuleType(name) for name in (
        "pytorch_lightning", "pytorch_lightning.callbacks", "omegaconf")}
    for name, cls in (("pytorch_lightning.callbacks.model_checkpoint", ModelCheckpoint),
                      ("omegaconf.dictconfig", DictConfig)):
        mods[name] = types.ModuleType(name)
        cls.__module__, cls.__qualname__ = name, cls.__name__
        setattr(mods[name], cls.__name__, cls)
    return mods


def test_real_ldm_checkpoint_loads_without_running_its_metadata(tmp_path, marker, monkeypatch):
    """A lightning .ckpt: the callback class as a dict key, omegaconf hparams, numpy scalars,
    argparse hparams, optimizer states. Its state_dict is read, nothing else runs."""
    from diffusers import VQModel

    from pixbench.models.taming import pickle_globals, vqmodel_from_taming
    from test_vq import _to_taming_layout

    mods = _fake_lightning_modules(marker)
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    cb_cls = mods["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint
    cfg = mods["omegaconf.dictconfig"].DictConfig({"embed_dim": 4})
    torch.manual_seed(0)
    model = VQModel(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 32),
                    layers_per_block=1, latent_channels=4, num_vq_embeddings=8,
                    norm_num_groups=32).eval()
    sd = {f"first_stage_model.{k}": v for k, v in _to_taming_layout(model.state_dict(), 2).items()}
    ckpt = {"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "1.4.2",
            "state_dict": sd, "callbacks": {cb_cls: {"best_model_score": torch.tensor(0.1),
                                                     "kth_value": np.float64(0.5)}},
            "hyper_parameters": cfg, "hparams": argparse.Namespace(lr=1e-4),
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}],
            "lr_schedulers": []}
    path = tmp_path / "model.ckpt"
    torch.save(ckpt, path)
    names = pickle_globals(path)
    assert "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint" in names
    with pytest.raises(Exception):  # what a plain weights_only=True load does
        torch.load(path, weights_only=True)
    for name in mods:
        monkeypatch.delitem(sys.modules, name)  # as on a machine without lightning
    loaded = vqmodel_from_taming(path).eval()
    assert not marker.exists()
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(model(x).sample, loaded(x).sample, atol=1e-5)


# ------------------------------------------------------------------ paths and HTML


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a/../.."])
def test_under_root_refuses_escapes(tmp_path, path):
    from pixbench.runio import under_root

    with pytest.raises(UserError, match="outside"):
        under_root(tmp_path / path if not path.startswith("/") else Path(path), tmp_path)


def test_under_root_follows_symlinks(tmp_path):
    from pixbench.runio import under_root

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    assert under_root(tmp_path / "root" / "a" / "b", tmp_path / "root").name == "b"
    with pytest.raises(UserError, match="outside"):
        under_root(tmp_path / "root" / "link" / "x", tmp_path / "root")


@pytest.mark.parametrize("method, args", [("run_dir", ("tiny", "../../x")),
                                          ("run_dir", ("..", "x")), ("cache_for", ("a/b",)),
                                          ("gen_cache_for", ("/etc",))])
def test_paths_refuse_unsafe_names(workdir, method, args):
    from pixbench.config import Paths

    with pytest.raises(UserError, match="not a safe name"):
        getattr(Paths(), method)(*args)


def test_report_html_escapes_text_from_metrics(tmp_path):
    from pixbench.report.html import markdown_to_html

    md = ("# report\n\n| dataset | top1 |\n|---|---|\n| <script>alert(1)</script> | 1 |\n\n"
          "Profile `x` <img src=x onerror=alert(2)> and [link](javascript:alert(3))\n")
    html = markdown_to_html(md, tmp_path, "<title>")
    assert "<script>" not in html and "<img src=x" not in html and 'href="javascript' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<title>&lt;title&gt;" in html


def test_report_html_inlines_only_figures_below_its_dir(tmp_path):
    from pixbench.report.html import markdown_to_html

    (tmp_path / "reports" / "figures").mkdir(parents=True)
    (tmp_path / "reports" / "figures" / "a.png").write_bytes(b"\x89PNG fig")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG secret")
    html = markdown_to_html("![a](figures/a.png) ![b](../secret.png)", tmp_path / "reports", "r")
    assert "data:image/png;base64" in html and 'src="../secret.png"' in html


def test_safe_inception_extractor_loads_plain_weights(tmp_path, monkeypatch):
    """The weights_only path hands torch-fidelity's Inception-v3 exactly the file's tensors."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from pixbench.eval.fidelity import INCEPTION_NAME, _inception_extractor_class

    cls = _inception_extractor_class()
    dummy = tmp_path / "dummy.pth"
    torch.save({"x": torch.zeros(1)}, dummy)
    with monkeypatch.context() as m:  # a randomly initialised net, to get a full state dict
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        torch.manual_seed(0)
        net = cls(INCEPTION_NAME, ["2048"], feature_extractor_weights_path=str(dummy))
        state = net.state_dict()
    path = tmp_path / "inception.pth"
    torch.save(state, path)
    net = cls(INCEPTION_NAME, ["2048"], feature_extractor_weights_path=str(path))
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("name", ["../x.png", "a/b.png", "/etc/x.png", "..", "<b>.png"])
def test_report_figure_names_stay_in_the_figure_dir(tmp_path, name):
    from pixbench.report.plots import fig_path

    with pytest.raises(UserError, match="report figure"):
        fig_path(tmp_path, name)
    assert fig_path(tmp_path, "classify_tiny_fashion_mnist8.png").parent == tmp_path
