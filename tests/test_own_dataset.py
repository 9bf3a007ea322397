"""Your own dataset, as README.md's "Your own dataset" section runs it: two generated ImageFolder
datasets (gray digits stored as RGB; colour shapes where colour decides the class), each a
profile with its own study, through the README's commands in a copy of the project. Two
reports side by side, gray detected from the pixels, verify passing with "no reference",
`dvc status` clean afterwards, the headline numbers readable in a 120-column terminal
(`dvc metrics show`) and in `dvc exp show`'s table data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from studyrepo import make_study_repo, study_params

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = ("a", "b", "c")


def readme_commands() -> list[list[str]]:
    """The pixbench/dvc commands of the section's bash blocks, in order (comments dropped)."""
    section = README.read_text().split("## Your own dataset", 1)[1].split("\n## ", 1)[0]
    out = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                out.append(line.split())
    return out


def readme_profile() -> dict:
    section = README.read_text().split("## Your own dataset", 1)[1]
    return yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])["mydata"]


def write_gray(root: Path, rng) -> None:
    """Digit-like: the class sets which band is bright; saved as RGB with R = G = B."""
    from PIL import Image

    for split, n in (("train", 48), ("val", 24)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 60, (8, 8), dtype=np.uint8)
                img[:, 2 * c + 1:2 * c + 3] = 230
                Image.fromarray(np.stack([img] * 3, -1)).save(root / split / name / f"{i}.png")


def write_colour(root: Path, rng) -> None:
    """Shapes whose colour decides the class: the same random square, red, green or blue."""
    from PIL import Image

    for split, n in (("train", 48), ("val", 24)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.zeros((8, 8, 3), np.uint8)
                y, x = rng.integers(0, 4, 2)
                img[y:y + 4, x:x + 4, c] = 220
                Image.fromarray(img).save(root / split / name / f"{i}.png")


def own_profile(name: str) -> dict:
    """README's profile, shrunk to seconds: 8x8 images, patches 2 and 4, two seeds."""
    prof = readme_profile()
    prof["data"] = {**prof["data"], "root": name, "image_size": 8}
    prof["classify"].update(epochs=1, min_steps=12, batch_size=32, eval_batch_size=64,
                            curve_every_steps=4, checkpoint_every_s=60.0)
    prof["sweep"] = {"patches": [2, 4], "seeds": [0, 1]}
    return prof


def run(repo: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    exe = [sys.executable, "-m", "pixbench.cli"] if args[0] == "pixbench" else \
        [sys.executable, "-m", "dvc"]
    res = subprocess.run(exe + args[1:], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, (args, res.stdout[-2000:], res.stderr[-3000:])
    return res


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    write_gray(tmp / "raw" / "gray", rng)
    write_colour(tmp / "raw" / "colour", rng)
    params = study_params()
    params["profiles"].update(gray=own_profile("gray"), colour=own_profile("colour"))
    params["studies"] = ["tiny", "gray", "colour"]
    repo = make_study_repo(tmp / "repo", params)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "config", "core.no_scm",
                                        "false"], ["git", "add", "-A"], git + ["commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True)  # `dvc exp` needs git
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXBENCH_")}
    # caches and run dirs on another filesystem than the repo: DVC tracks their identities
    env.update(PIXBENCH_CACHE_DIR=str(tmp / "scratch" / "cache"),
               PIXBENCH_RUNS_DIR=str(tmp / "scratch" / "runs"))
    env.update(PIXBENCH_DATA_ROOT=str(tmp / "raw"), COLUMNS="120", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")  # dvc runs `pixbench`
    outs = {}
    for name in ("gray", "colour"):
        for args in readme_commands():
            if args[:2] == ["pixbench", "verify"]:
                continue  # --record: checked below, after the study
            args = [a.replace("mydata", name) for a in args]
            if args[0] == "pixbench" and args[1] == "sweep":
                args = args[:args.index("--patches")] + ["--patches", "4", "--seeds", "0"]
            res = run(repo, args, env)
            outs[(name, args[1])] = res.stdout + res.stderr
    return repo, env, outs


def test_two_profiles_two_reports_gray_detected_and_no_reference(studied):
    repo, _, outs = studied
    gray = (repo / "reports" / "gray" / "REPORT.md").read_text()
    colour = (repo / "reports" / "colour" / "REPORT.md").read_text()
    assert not (repo / "reports" / "REPORT.md").exists()  # the first study's place: untouched
    assert "profile `gray`" in gray and "ImageFolder `gray`" in gray
    assert "profile `colour`" in colour
    assert re.search(r"1 channel\b.*gray", gray) and re.search(r"3 channels.*colour", colour)
    for text in (gray, colour):
        assert "## MAE" not in text and "## Generation" not in text  # tracks it does not run
        assert "Compute benchmark" not in text and "CIFAR-100 32x32 |" not in text
        assert "| ViT-XXS/2 |" in text and "| ViT-XXS/4 |" in text
    for name in ("gray", "colour"):
        assert "no reference for profile " + name in outs[(name, "study")]
        verdict = json.loads((repo / "reports" / "verify" / f"{name}.json").read_text())
        assert verdict["reference"] is None and verdict["departures"] == 0
        summary = json.loads((repo / "reports" / name / "summary.json").read_text())
        assert summary["n"] == 2 and summary["cells"] == 2
        assert set(summary["top1"]) == set(summary["top1_sd"]) == {"p2", "p4"}
    # the budget rule: 144 images at batch 32 are 4 steps an epoch; min_steps 12 makes 3 epochs
    assert "at least 12 optimizer steps (min_steps: 3 epochs trained" in gray
    assert "est. time" in outs[("gray", "sweep")] and "total:" in outs[("gray", "sweep")]
    logs = list((repo / "logs" / "studies").glob("*/classify-xxs-p4-s0.log"))
    assert logs and any(" eta " in log.read_text() for log in logs)  # progress with an ETA


def test_dvc_status_is_clean_and_metrics_fit_a_terminal(studied):
    """Recorded although the caches and runs live outside the repo (PIXBENCH_CACHE_DIR,
    PIXBENCH_RUNS_DIR): DVC tracks their identity files and copies neither."""
    repo, env, _ = studied
    status = run(repo, ["dvc", "status", "verify@gray", "verify@colour"], env).stdout
    assert "up to date" in status, status
    scratch = Path(env["PIXBENCH_RUNS_DIR"])
    assert (scratch / "gray" / "classify-xxs-p4-s1" / "metrics.json").is_file()
    assert not (repo / "runs").exists() and not (repo / "data").exists()
    cached = sum(f.stat().st_size for f in (repo / ".dvc" / "cache").rglob("*") if f.is_file())
    assert cached < 1_000_000, cached  # identities and plots only, no checkpoint or array
    shown = run(repo, ["dvc", "metrics", "show"], env).stdout
    rows = [ln for ln in shown.splitlines() if re.search(r"(gray|colour)/summary.json", ln)]
    assert len(rows) == 2 and all(len(ln) <= 120 for ln in shown.splitlines()), shown
    assert all(re.search(r"summary.json\s+2\s+2\s+\d", ln) for ln in rows), shown  # cells, n
    assert "failed to load" not in shown
    # `dvc exp show` lists them too (as a table it also prints every leaf of params.yaml, more
    # than a terminal holds: README says so); its CSV carries each profile's headline numbers
    exp = run(repo, ["dvc", "exp", "show", "--csv"], env).stdout.splitlines()
    head, row = exp[0].split(","), exp[1].split(",")
    got = {h: v for h, v in zip(head, row) if h.endswith(("gray/summary.json:top1.p4",
                                                          "colour/summary.json:top1.p4"))}
    assert len(got) == 2 and all(float(v) > 0 for v in got.values()), got


def test_verify_record_makes_a_reference_that_then_holds(studied):
    repo, env, _ = studied
    run(repo, ["pixbench", "verify", "--profile", "gray", "--record"], env)
    assert (repo / "reports" / "reference" / "gray.json").is_file()
    out = run(repo, ["pixbench", "verify", "--profile", "gray"], env).stdout
    assert "reproduced 2 of 2 cells" in out and out.count("), bitwise equal") == 2, out
