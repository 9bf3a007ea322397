"""The CLI: lazy imports, one-line errors with exit code 2, no partial outputs, one option set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from pixbench import cli


from hostile import run_cli  # noqa: E402  (the one in-process CLI runner of the tests)


def _leaf_commands():
    """(words, click command) for every runnable command of the root app."""
    import typer

    def walk(cmd, words):
        if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*words, name])
        else:
            yield words, cmd

    return list(walk(typer.main.get_command(cli.app), []))


LEAVES = [" ".join(words) for words, _ in _leaf_commands()]
HEAVY = ("torch", "timm", "dvc", "dvclive", "matplotlib", "diffusers", "torch_fidelity",
         "submitit")


def test_help_imports_no_heavy_modules():
    probe = ("import sys; from typer.testing import CliRunner; from pixbench.cli import app; "
             f"r = [CliRunner().invoke(app, a.split() + ['--help']) for a in {['', *LEAVES]!r}]; "
             "assert all(x.exit_code == 0 for x in r), [x.output for x in r]; "
             f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
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


def test_every_command_is_registered():
    assert sorted(LEAVES) == sorted([
        "classify run", "data prepare", "data verify", "dit eval", "dit sample", "dit train",
        "featnet train", "instruments freeze", "mae finetune", "mae linprobe", "mae pretrain", "mae scratch", "params show",
            "report",
        "study cancel", "study cells", "study run", "study status", "study submit", "sweep", "verify", "vq encode", "vq eval",
        "vq train"])


def test_version(monkeypatch, capsys):
    from pixbench import __version__

    code, out, _ = run_cli(["--version"], monkeypatch, capsys)
    assert code == 0 and out.strip() == f"pixbench {__version__}"


NOUNS = sorted({w.split()[0] for w in LEAVES if " " in w})


@pytest.mark.parametrize("words", [[], *([n] for n in NOUNS), *(w.split() for w in LEAVES)],
                         ids=lambda w: " ".join(w) or "root")
def test_dash_h_is_help(words, monkeypatch, capsys):
    code, out, _ = run_cli([*words, "-h"], monkeypatch, capsys)
    code_long, out_long, _ = run_cli([*words, "--help"], monkeypatch, capsys)
    assert code == code_long == 0 and "Usage: pixbench" in out and out == out_long


# study: its params are dvc.yaml's (params.yaml's `profile`). The benchmark suite is no
# command of the library: `make bench` (tests/test_tooling.py)
NO_PROFILE = {"study cancel", "study cells", "study run", "study status", "study submit"}


def test_profile_flag_is_the_params_profile_everywhere():
    from pixbench.cli.options import ProfileOpt

    help_text = ProfileOpt.__metadata__[0].help
    with_profile = []
    for words, cmd in _leaf_commands():
        opts = {o: p for p in cmd.params for o in p.opts}
        if "--profile" in opts:
            assert opts["--profile"].help == help_text and "--params" in opts, words
            with_profile.append(" ".join(words))
    assert set(LEAVES) - set(with_profile) == NO_PROFILE


@pytest.mark.parametrize("words", [w for w in LEAVES if w not in NO_PROFILE])
def test_unknown_params_profile_is_refused_by_every_command(words, tiny_project, monkeypatch,
                                                            capsys):
    patch = ["--patch", "2"] if words.split()[0] in ("classify", "mae", "dit") else []
    code, _, err = run_cli([*words.split(), *patch, "--profile", "other"], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: --profile 'other' is not one of")
    assert not (tiny_project.parent / "runs").exists()


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "pixbench.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.startswith("pixbench ")
