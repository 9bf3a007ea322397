"""Issue 25, "your own dataset, honestly": the report never headlines a comparison (Δ, t, p,
"better") for cells that did not learn, and its plateau table does not invert the truth on
short runs. The validity gate is verify/conclusions.py's (run_gate, group_gate, cell_gate).

The end-to-end case runs the real classification task (data prepare, sweep, report) on an
ImageFolder whose labels are shuffled: the images carry a pattern, the labels do not follow it,
so no model can beat chance on val. The cases of the issue's user are replayed on rows shaped
as the report reads them."""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest
from conftest import TINY_CLASSIFY, TINY_MAE, TINY_PARAMS, write_params

from pixbench.report import aggregate, pixel_vs_best
from pixbench.report.tables import classify_table, plateau_table
from pixbench.tasks.table import TASKS
from pixbench.verify.conclusions import conclude, run_gate

CLASSES, TRAIN, VAL = 5, 32, 16  # per class; 5 classes as the issue's chance-level set


def shuffled_imagefolder(root, seed: int = 0) -> None:
    """8x8 gray PNGs, a bright band at one of 5 rows each, filed under a class drawn
    independently of the band (equal class counts): the label is noise to the model."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", TRAIN), ("val", VAL)):
        labels = rng.permutation(np.repeat(np.arange(CLASSES), n))
        bands = rng.integers(0, CLASSES, labels.size)
        for i, (label, band) in enumerate(zip(labels, bands)):
            d = root / split / f"c{label}"
            d.mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 40, (8, 8), dtype=np.uint8)
            img[band:band + 2] = 250
            Image.fromarray(img).save(d / f"{i}.png")


def shuffled_params() -> dict:
    params = copy.deepcopy(TINY_PARAMS)
    params["profile"] = "shuffled"
    params["sweep"] = {"sizes": ["xxs"], "patches": [1, 4], "seeds": [0, 1]}
    params["locality"]["run"] = []
    params["verify"] = {"k": 4.0, "rel_floor": 0.01, "single_seed_rel": 0.15, "alpha": 0.05,
                        "sanity": {}}
    data = {"source": "imagefolder", "root": "shuffled", "image_size": 8, "allow_download": False,
            "skip_corrupt": False, "channels": "auto", "fast_decode": None}
    # curve every 2 of 10 steps: 6 windows, enough for a plateau verdict
    params["profiles"] = {"shuffled": {"data": data, "mae": TINY_MAE,
                                       "classify": {**TINY_CLASSIFY, "curve_every_steps": 2}}}
    return params


def cli(args: list[str], mp: pytest.MonkeyPatch) -> None:
    from pixbench import cli as entry

    mp.setattr(sys, "argv", ["pixbench", *args])
    try:
        entry.main()
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)


@pytest.fixture(scope="module")
def shuffled_study(tmp_path_factory):
    """The real task, once for the module: data prepare, the sweep's 4 cells (2 patch sizes x
    2 seeds), report. Yields (project dir, REPORT.md text)."""
    root = tmp_path_factory.mktemp("shuffled")
    with pytest.MonkeyPatch.context() as mp:
        for var, sub in (("CACHE_DIR", "data"), ("RUNS_DIR", "runs"),
                         ("REPORTS_DIR", "reports"), ("DATA_ROOT", "raw")):
            mp.setenv(f"PIXBENCH_{var}", str(root / sub))
        mp.delenv("PIXBENCH_DEBUG", raising=False)
        mp.chdir(root)
        shuffled_imagefolder(root / "raw" / "shuffled")
        write_params(root / "params.yaml", shuffled_params())
        cells = [["classify", "run", "--patch", str(p), "--seed", str(s)]
                 for p in (1, 4) for s in (0, 1)]  # the sweep's cells, one command each
        for args in (["data", "prepare"], *cells, ["report"]):
            cli([*args, "--profile", "shuffled"], mp)
        yield root, (root / "reports" / "REPORT.md").read_text()


def test_a_shuffled_label_study_is_warned_about_not_compared(shuffled_study):
    root, text = shuffled_study
    section = text.split("## Classification", 1)[1].split("## Environment", 1)[0]
    line = next(ln for ln in section.splitlines() if ln.startswith("- ViT-XXS: pixels"))
    # the stated reason, and no test: Δ, t, p or a "best" patch size
    assert "no test" in line and "top-1 not clearly above chance (20.0 %)" in line, line
    assert "Welch" not in section and "t = " not in section and "p = " not in section
    assert "better" not in section and "best patch size" not in section
    for cell in ("ViT-XXS/1", "ViT-XXS/4"):
        assert f"- {cell}: no test or ranking: top-1 not clearly above chance (20.0 %)" in section
    # chance beside the top-1 table; top-5 is 100 % by construction with 5 classes: not shown
    assert "Chance: 1/5 classes = 20.0 % top-1." in section
    assert "Top-5 is not shown: with 5 classes it is trivially 100 %" in section
    assert "top-5 %" not in section
    runs = sorted((root / "runs" / "shuffled").glob("classify-*/metrics.json"))
    assert len(runs) == 4 and all(json.loads(p.read_text())["num_classes"] == CLASSES
                                  for p in runs)


def test_a_shuffled_label_study_enters_no_conclusion(shuffled_study):
    """The Conclusions' gate on the real runs' metrics and curves, as verify.collect builds
    its groups: every pair is invalid, with the reason, and no p-value."""
    root, _ = shuffled_study
    groups: dict = {}
    for m_file in sorted((root / "runs" / "shuffled").glob("classify-*/metrics.json")):
        m = json.loads(m_file.read_text())
        curve = json.loads(m_file.with_name("curve.json").read_text())
        entry = groups.setdefault(f"classify xxs p{m['patch']}", {"task": "classify", "runs": []})
        entry["runs"].append({"run_id": m_file.parent.name, "seed": m["seed"],
                              "values": {"top1": m["top1"]}, "gate": run_gate(m, curve)})
    (c,) = conclude(groups, 0.05, TASKS)
    assert c.verdict == "invalid" and "not clearly above chance" in c.statement()
    assert "p = " not in c.statement() and "better" not in c.statement()


def row(patch: int, seed: int, top1: float, losses: list[float], classes: int = 10,
        val_n: int = 1000) -> dict:
    """A report row (collect_runs' shape) whose curve has these window-mean losses."""
    total, curve = 0.0, []
    for i, loss in enumerate(losses, start=1):
        total += loss * 100
        curve.append({"step": 100 * i, "epoch": round(i / (len(losses) + 0.5), 4),
                      "train_loss": total / (100 * i), "val_top1_subset": top1})
    return {"dataset": "mine", "image_size": 28, "size": "xxs", "patch": patch, "seed": seed,
            "display": f"ViT-XXS/{patch}", "tokens": (28 // patch) ** 2, "params": 1000,
            "gflops_train": 1.0, "gflops_infer": 0.3, "top1": top1, "top5": 100.0,
            "num_classes": classes, "val_n": val_n, "steps": 100 * len(losses), "_curve": curve}


def test_issue_short_run_plateau_is_not_headlined_and_not_inverted():
    """The user's 4k-image set: 3 curve points; p=1 sat on its plateau (24.85 %), p=7 learned
    (61 %) inside the early window. The old table read "never" for both."""
    flat, early = [2.05, 2.0, 1.98], [2.0, 1.2, 1.15]
    groups = aggregate([row(1, 0, 23.9, flat), row(1, 1, 25.8, flat),
                        row(7, 0, 59.9, early), row(7, 1, 62.2, early)])
    (line,) = pixel_vs_best(groups)
    assert "no test" in line and "t = " not in line and "p = " not in line
    assert "p=1: 2 of 2 seeds' learning curves too short for a plateau verdict" in line
    assert "; p=7:" not in line  # far above chance: it learned, whatever its 3 points say
    table = "\n".join(plateau_table(groups))
    assert "never" not in table and table.count("too few curve points (3)") == 4


def test_issue_chance_level_set_states_chance_and_drops_top5():
    """The user's 2.4k-image 5-class set: every patch size at chance (20.5 / 21.0 / 21.3 %)."""
    falling = [1.7, 1.65, 1.62, 1.61, 1.61, 1.6, 1.6, 1.6]
    rows = [row(p, s, top1 + s / 10, falling, classes=5, val_n=480)
            for p, top1 in ((1, 20.5), (4, 21.0), (7, 21.3)) for s in (0, 1)]
    groups = aggregate(rows)
    (line,) = pixel_vs_best(groups)
    assert "no test" in line and "top-1 not clearly above chance (20.0 %) in 2 of 2" in line
    text = "\n".join(classify_table(groups))
    assert "top-5 %" not in text and "| 100.00 |" not in text
    assert "Chance: 1/5 classes = 20.0 % top-1" in text and "trivially 100 %" in text
    for p in (1, 4, 7):
        assert f"- ViT-XXS/{p}: no test or ranking: top-1 not clearly above chance" in text
    ten = aggregate([row(p, 0, 80.0, falling) for p in (1, 4)])
    assert "top-5 %" in classify_table(ten)[0]  # 10 classes: top-5 means something


def test_a_run_that_learned_early_reads_no_stall_not_never():
    """8 curve points (enough for a verdict), the loss fell inside the early window and
    stayed: at 85 % top-1 the table says it learned; at 30 % it says never."""
    early = [2.3, 0.9, 0.88, 0.87, 0.86, 0.86, 0.85, 0.85]
    table = "\n".join(plateau_table(aggregate([row(4, 0, 85.0, early), row(2, 0, 30.0, early)])))
    assert "| ViT-XXS/4 | 0 | 85.00 | 0.900 | no stall (top-1 far above chance) |" in table
    assert "| ViT-XXS/2 | 0 | 30.00 | 0.900 | never |" in table


def test_the_mae_table_gives_no_test_for_a_side_at_chance():
    """MAE fine-tune vs scratch (report/mae.py) goes through the same gate."""
    from pixbench.report.mae import mae_table

    def mae_row(task: str, seed: int, top1: float) -> dict:
        return {"task": task, "size": "xxs", "patch": 4, "seed": seed, "top1": top1,
                "num_classes": 5, "val_n": 480, "tokens": 49, "gflops_train": 1.0,
                "recon_loss": 0.5}

    rows = [mae_row("mae-pretrain", s, 0.0) for s in (0, 1)] + [
        mae_row("mae-finetune", s, 21.0 + s) for s in (0, 1)] + [
        mae_row("mae-scratch", s, 60.0 + s) for s in (0, 1)]
    line = mae_table(rows, "pix")[-1]
    assert "no test (finetune: top-1 not clearly above chance (20.0 %) in 2 of 2 seeds)" in line
    assert "t = " not in line and " pt" not in line
    learned = [r if r["task"] != "mae-finetune" else {**r, "top1": r["top1"] + 50} for r in rows]
    assert "t = " in mae_table(learned, "pix")[-1]  # both sides learned: the test is shown
