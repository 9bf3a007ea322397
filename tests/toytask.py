"""A toy task written the way README "Adding a task" says, in this one file: a spec (what
determines the result), a body (the algorithm: modules, one step, its outputs), a run function,
and the task table's entry (tests/test_trainer.py puts it in the table). The trainer gives it
resume, checkpoints, curve rows, the divergence guard and reuse of a finished run."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pixbench.config.schema import Digestible
from pixbench.rng import batch_indices
from pixbench.tasks.runner import Run, State
from pixbench.tasks.table import Task
from pixbench.tasks.trainer import Body, Schedule, identity, run_task


class ToySpec(Digestible):
    task: Literal["toy"] = "toy"
    profile: str = "tiny"
    seed: int = 0
    steps: int = 40
    lr: float = 0.05

    @property
    def run_id(self) -> str:
        return f"toy-s{self.seed}"


class ToyBody(Body):
    """Least squares by SGD on 64 fixed points: a curve row every 10 steps."""

    def __init__(self, spec: ToySpec, device: torch.device) -> None:
        torch.manual_seed(spec.seed)
        self.spec, self.model = spec, nn.Linear(4, 1).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=spec.lr)
        gen = torch.Generator().manual_seed(spec.seed)
        self.x = torch.randn(64, 4, generator=gen).to(device)  # (N, 4)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0], device=device)  # (N,)
        self.schedule = Schedule(spec.steps, row_every=10)

    def modules(self) -> dict:
        return {"model": self.model, "optimizer": self.opt}

    def step(self, state: State) -> dict:
        idx = batch_indices(64, 16, self.spec.seed, state.global_step)  # (B,)
        loss = F.mse_loss(self.model(self.x[idx]).squeeze(1), self.y[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def outputs(self, run: Run, state: State) -> dict:
        return {**identity(run, state), "final_loss": state.history[-1]["train_loss"]}


def run(spec: ToySpec, paths, *, stale: str = "error", device: str = "auto",
        progress: bool = False) -> dict:
    return run_task(spec, paths, lambda r: ToyBody(spec, r.device), stale=stale, device=device,
                    progress=progress, checkpoint_every_s=600.0)


def _body():
    return run


TOY = Task("toy", ToySpec, _body, ("final_loss",))
