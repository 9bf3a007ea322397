"""The one definition of a loss plateau and the step that escapes it, from a learning curve.

Why: at a CPU budget, a pixel model (p=1) can sit at a train loss near 2.0 (10 classes, about
27% top-1) for hundreds of steps and then drop; some seeds never drop within the run. A seed's
final top-1 then says "stalled" only indirectly; the report shows the plateau level and the
escape step per seed so the stall is visible.

The rule (a definition of ours, not taken from a paper):
1. The curve is a list of window means of the train loss, (step, mean loss over the steps since
   the previous point); `interval_losses` makes it from a classification curve.
2. Plateau level P: the lowest window mean among the first HEAD_FRACTION of the run's steps
   (at least the first MIN_HEAD_POINTS windows), i.e. where the run sits early on.
3. Escape step: the end step of the first window whose mean is below (1 - DROP) * P, i.e. a
   clear fall under the plateau; None when no window falls that far (the run never escapes).
A run that does not plateau (p=4 falls from the start) escapes at an early step by this rule;
the numbers tell a stalled seed (None, or late) from the others, which is what they are for.
4. "Never" needs enough curve: at least MIN_VERDICT_POINTS windows. On a short curve the head
   is most of the run (3 points: 2 of them), so a model that learned inside the head has nothing
   left to fall below and read "never" while at 60 % top-1 (issue 25). A short curve without an
   escape is therefore "short" (no verdict), never "never"; an escape seen on a short curve is
   still one (a clear fall below the early level). Fewer than MIN_HEAD_POINTS + 1 windows: no
   plateau level either.
The verdict here reads the loss only; verify/conclusions.run_gate checks it against the run's
final top-1 (a run far above chance is never "never": it learned, whatever its curve says).
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD_FRACTION = 0.25  # the early part of the run that defines the plateau level
MIN_HEAD_POINTS = 2   # windows that define it at least (the first one holds the initial fall)
DROP = 0.10           # "clearly below": 10% under the plateau level
# "Never" is said from this many windows on: the head (at least 2) plus at least twice as many
# after it. The default study's curves have 8 (a row every 100 of 624 steps, and epoch ends).
MIN_VERDICT_POINTS = 6


@dataclass(frozen=True)
class Plateau:
    level: float | None        # P, the early loss level
    escape_step: int | None    # first window end below (1 - DROP) * P; None: not seen
    points: int = 0            # windows of the curve the verdict rests on

    @property
    def verdict(self) -> str:
        """"escaped", "never" (enough windows, none clearly below P) or "short" (too few
        windows to say never: MIN_VERDICT_POINTS)."""
        if self.escape_step is not None:
            return "escaped"
        return "never" if self.points >= MIN_VERDICT_POINTS else "short"


def interval_losses(curve: list[dict]) -> list[tuple[int, float]]:
    """(step, mean train loss over the steps since the previous row) from a classification
    curve. Its rows carry `train_loss`, the running mean of the current epoch so far
    (tasks/classify/engine.py: the State's loss sum is reset only at an epoch end, and every
    epoch ends with a row), so a window's mean is recovered from two running means:
    (n_b * L_b - n_a * L_a) / (n_b - n_a), with n the steps since the epoch began."""
    out, prev_step, epoch_start, prev_sum = [], 0, 0, 0.0
    for row in sorted(curve, key=lambda r: r["step"]):
        step, mean = int(row["step"]), row.get("train_loss")
        if mean is None or step <= prev_step:
            continue
        total = mean * (step - epoch_start)  # loss summed since the epoch began
        out.append((step, (total - prev_sum) / (step - prev_step)))
        prev_step, prev_sum = step, total
        if float(row.get("epoch", 0.0)).is_integer():  # the epoch ended here: sums restart
            epoch_start, prev_sum = step, 0.0
    return out


def plateau(points: list[tuple[int, float]]) -> Plateau:
    """The plateau level and escape step of window-mean losses (see the module's rule)."""
    if len(points) < MIN_HEAD_POINTS + 1:
        return Plateau(None, None, len(points))
    last = points[-1][0]
    head = [loss for step, loss in points if step <= HEAD_FRACTION * last]
    if len(head) < MIN_HEAD_POINTS:
        head = [loss for _, loss in points[:MIN_HEAD_POINTS]]
    level = min(head)
    below = (1.0 - DROP) * level
    escape = next((step for step, loss in points if loss < below), None)
    return Plateau(level, escape, len(points))
