"""Fixed instruments (tasks/gen/instruments.py): a trained tokenizer and FeatNet frozen into
instruments/<profile>/, pinned by sha256 in params, loaded instead of trained, refused when
their bytes change, and part of the identity of every cell that uses them."""

from __future__ import annotations

import shutil

import yaml
from hostile import assert_refused, run_cli

from pixbench.config import (Paths, load_params, make_dit_spec, make_featnet_spec,
                             make_vq_spec)


def _train_and_freeze(gen_project, monkeypatch, capsys) -> dict:
    from pixbench.tasks.gen import featnet, vq

    params = load_params(gen_project)
    vq.run(make_vq_spec(params), Paths(), progress=False)
    featnet.run(make_featnet_spec(params), Paths(), progress=False)
    code, out, err = run_cli(["instruments", "freeze"], monkeypatch, capsys)
    assert code == 0, err
    pins = yaml.safe_load(out.split("params.yaml:\n", 1)[1])
    raw = yaml.safe_load(gen_project.read_text())
    raw["profiles"]["tiny"]["gen"]["vq"]["pretrained"] = pins["vq"]["pretrained"]
    raw["profiles"]["tiny"]["gen"]["featnet"]["pretrained"] = pins["featnet"]["pretrained"]
    gen_project.write_text(yaml.safe_dump(raw))
    return pins


def test_frozen_instruments_load_as_the_same_bytes_and_pin_cell_identity(gen_project,
                                                                         monkeypatch, capsys):
    from pixbench.tasks.gen import featnet, vq

    before = load_params(gen_project)
    trained_fn = Paths().run_dir("tiny", make_featnet_spec(before).run_id) / "featnet.pt"
    dit_before = make_dit_spec(before, size="xxs", patch=1, seed=0).digest()
    pins = _train_and_freeze(gen_project, monkeypatch, capsys)
    frozen = trained_fn.read_bytes()
    assert (gen_project.parent / "instruments" / "tiny" / "PROVENANCE.json").is_file()
    params = load_params(gen_project)
    # a pinned instrument changes the identity of every cell that uses it
    assert make_dit_spec(params, size="xxs", patch=1, seed=0).digest() != dit_before
    m = vq.run(make_vq_spec(params), Paths(), stale="restart", progress=False)
    assert m["pretrained"] and m["steps"] == 0
    f = featnet.run(make_featnet_spec(params), Paths(), stale="restart", progress=False)
    assert f["pretrained"] and 0.0 <= f["val_top1"] <= 1.0
    run_fn = Paths().run_dir("tiny", make_featnet_spec(params).run_id) / "featnet.pt"
    assert run_fn.read_bytes() == frozen  # the ruler is the committed bytes, not a retrain
    assert pins["featnet"]["pretrained"]["root"] == "instruments"
    # a changed byte in the committed ruler: refused naming the field, the run dir untouched
    inst = gen_project.parent / "instruments" / "tiny" / "featnet.pt"
    blob = bytearray(inst.read_bytes())
    blob[-1] ^= 1
    inst.write_bytes(bytes(blob))
    shutil.rmtree(run_fn.parent)
    capsys.readouterr()  # diffusers' load warnings of the runs above
    assert_refused(["featnet", "train"], "featnet.pretrained", gen_project.parent, monkeypatch,
                   capsys)


def test_an_instrument_needs_its_sha256(gen_project):
    import pytest

    from pixbench.errors import UserError

    raw = yaml.safe_load(gen_project.read_text())
    raw["profiles"]["tiny"]["gen"]["featnet"]["pretrained"] = {
        "path": "tiny/featnet.pt", "root": "instruments", "sha256": None}
    gen_project.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match="sha256"):
        load_params(gen_project)
