"""Recipe probe for the pixel model's loss plateau (reports/bench/recipe-search.md).

Trains classification cells in one process with the project's own engine (the same model
build, optimiser, batches and seeds as `pixbench classify run`, without curve points), with
overrides of the active profile's classify recipe, and appends one JSON line per cell: final
top-1 on the full val set, the mean train loss of every 25-step window and the escape step
(the end of the first window whose mean loss is below 1.5; the plateau sits near 2.0) and
the official one of eval/plateau.py on windows at the pipeline curve's cadence.

    OMP_NUM_THREADS=1 python bench/recipe_search.py NAME PATCHES SEEDS 'JSON' [OUT_DIR]
    e.g. python bench/recipe_search.py lr18 1 0,1,2 '{"optim.lr": 0.018}' /tmp/search
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import yaml

from pixbench.config import Paths, load_params, make_classify_spec
from pixbench.eval.plateau import plateau
from pixbench.tasks.classify import run as classify
from pixbench.tasks.classify.engine import ClassifyBody, evaluate
from pixbench.tasks.runner import State
from pixbench.tasks.trainer import fit

WINDOW, ESCAPED = 25, 1.5


def curve_windows(losses: list[float], every: int, steps_per_epoch: int) -> list[tuple[int, float]]:
    """(step, mean loss since the previous point) at the pipeline curve's cadence: every
    `every` steps and at each epoch end (tasks/classify/run.py), the input of eval/plateau.py."""
    ends = sorted({s for s in range(every, len(losses) + 1, every)}
                  | set(range(steps_per_epoch, len(losses) + 1, steps_per_epoch)))
    out, prev = [], 0
    for end in ends:
        out.append((end, sum(losses[prev:end]) / (end - prev)))
        prev = end
    return out


def params_with(overrides: dict, out_dir: Path, name: str):
    """params.yaml with dotted overrides of the active profile's classify part."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    node = raw["profiles"][raw["profile"]]["classify"]
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        target = node
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    path = out_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_params(path)


def probe(spec, paths: Paths) -> dict:
    cfg, cpu = spec.classify, torch.device("cpu")
    ds, data = classify.load_data(spec, paths)
    model = classify.build_model(spec, ds.manifest)
    body, losses = ClassifyBody(spec, model, data, device=cpu, bf16=False), []
    step = body.step
    body.step = lambda s: {**(out := step(s)), "loss": losses.append(out["loss"].item())
                           or out["loss"]}  # this probe's per-step curve (a sync per step)
    t0 = time.process_time()
    fit(body, State())
    cpu_s = time.process_time() - t0
    final = evaluate(model, data.val_x, data.val_y, data.mean, data.std, device=cpu,
                     batch_size=cfg.eval_batch_size, bf16=False)
    windows = [sum(losses[i:i + WINDOW]) / WINDOW for i in range(0, len(losses) - WINDOW + 1, WINDOW)]
    escape = next(((i + 1) * WINDOW for i, v in enumerate(windows) if v < ESCAPED), None)
    official = plateau(curve_windows(losses, cfg.curve_every_steps, len(losses) // cfg.epochs))
    return {"patch": spec.patch, "seed": spec.seed, "top1": final["top1"], "escape_step": escape,
            "plateau_level": official.level, "plateau_escape": official.escape_step,
            "steps": len(losses), "train_cpu_s": round(cpu_s, 1),
            "loss25": [round(v, 3) for v in windows]}


def main(argv: list[str]) -> None:
    name, patches, seeds, overrides = argv[0], argv[1], argv[2], json.loads(argv[3])
    out_dir = Path(argv[4] if len(argv) > 4 else "runs/recipe-search")
    out_dir.mkdir(parents=True, exist_ok=True)
    params = params_with(overrides, out_dir, name)
    with open(out_dir / f"{name}.jsonl", "a") as out:
        for patch in map(int, patches.split(",")):
            for seed in map(int, seeds.split(",")):
                spec = make_classify_spec(params, size="xxs", patch=patch, seed=seed)
                row = {"name": name, "over": overrides, **probe(spec, Paths())}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(name, patch, seed, row["top1"], row["escape_step"], row["plateau_escape"],
                      flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
