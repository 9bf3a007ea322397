"""The CLI: lazy imports, one-line errors with exit code 2, no partial outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from pixbench import cli


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["pixbench", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_imports_no_heavy_modules():
    probe = ("import sys; from typer.testing import CliRunner; from pixbench.cli import app; "
             "r = [CliRunner().invoke(app, a + ['--help']) for a in ([], ['data', 'prepare'], "
             "['classify', 'run'], ['report'], ['bench'], ['sweep'], ['mae', 'pretrain'], "
             "['mae', 'finetune'], ['vq', 'train'], ['vq', 'encode'], ['vq', 'eval'], "
             "['featnet', 'train'], ['dit', 'train'], ['dit', 'eval'], ['dit', 'sample'])]; assert all(x.exit_code == 0 for x in r); "
             "print(sorted(m for m in ('torch', 'timm', 'dvclive', 'matplotlib', 'diffusers', 'torch_fidelity') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_classify_run_through_cli_prints_metrics(tiny_project, monkeypatch, capsys):
    code, out, err = run_cli(["classify", "run", "--patch", "4", "--seed", "0"], monkeypatch, capsys)
    assert code == 0, err
    metrics = json.loads(out.strip().splitlines()[-1])
    assert metrics["run_id"] == "classify-xxs-p4-s0" and metrics["tokens"] == 4


@pytest.mark.parametrize("args, message", [
    (["classify", "run", "--patch", "3"], "--patch 3 does not divide"),
    (["classify", "run", "--patch", "2", "--size", "huge"], "--size 'huge' is not a known size"),
    (["classify", "run", "--patch", "2", "--stale", "maybe"], "--stale must be"),
    (["classify", "run", "--patch", "2", "--profile", "other"], "--profile 'other' is not one of"),
    (["classify", "run", "--patch", "2", "--params", "missing.yaml"], "params file not found"),
])
def test_bad_flags_exit_2_with_one_line(tiny_project, monkeypatch, capsys, args, message):
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tiny_project.parent / "runs").exists()


def test_unknown_param_key_exit_2(tiny_project, monkeypatch, capsys):
    params = yaml.safe_load(tiny_project.read_text())
    params["profiles"]["tiny"]["classify"]["optim"]["momentum"] = 0.9
    tiny_project.write_text(yaml.safe_dump(params))
    code, _, err = run_cli(["classify", "run", "--patch", "2"], monkeypatch, capsys)
    assert code == 2 and "profiles.tiny.classify.optim.momentum: unknown key" in err


def test_missing_and_corrupt_dataset_exit_2_without_outputs(tiny_project, monkeypatch, capsys):
    cache = tiny_project.parent / "data" / "tiny"
    (cache / "train_images.npy").write_bytes(b"garbage")
    code, _, err = run_cli(["classify", "run", "--patch", "2"], monkeypatch, capsys)
    assert code == 2 and "train_images.npy" in err
    import shutil
    shutil.rmtree(cache)
    code, _, err = run_cli(["classify", "run", "--patch", "2"], monkeypatch, capsys)
    assert code == 2 and "dataset cache not found" in err
    assert not (tiny_project.parent / "runs" / "tiny" / "classify-xxs-p2-s0").exists()


def test_cache_for_another_data_spec_is_rejected(tiny_project, monkeypatch, capsys):
    params = yaml.safe_load(tiny_project.read_text())
    params["profiles"]["tiny"]["data"]["allow_download"] = True
    tiny_project.write_text(yaml.safe_dump(params))
    code, _, err = run_cli(["classify", "run", "--patch", "2"], monkeypatch, capsys)
    assert code == 2 and "prepared for another data spec" in err


def test_debug_env_shows_traceback(tiny_project, monkeypatch, capsys):
    from pixbench.errors import UserError

    monkeypatch.setenv("PIXBENCH_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["pixbench", "classify", "run", "--patch", "3"])
    with pytest.raises(UserError):
        cli.main()
