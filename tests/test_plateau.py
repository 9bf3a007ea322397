"""eval/plateau.py: window means from a classification curve, the plateau level, the escape."""

from __future__ import annotations

import statistics

import pytest

from pixbench.eval.plateau import DROP, MIN_VERDICT_POINTS, interval_losses, plateau


def curve_rows(losses: list[float], steps_per_epoch: int, every: int) -> list[dict]:
    """Curve rows as the classification task writes them: every `every` steps and at each
    epoch end, train_loss = the running mean of the epoch so far."""
    rows, epoch_sum, epoch_n = [], 0.0, 0
    for step, loss in enumerate(losses, start=1):
        epoch_sum, epoch_n = epoch_sum + loss, epoch_n + 1
        end = step % steps_per_epoch == 0
        if step % every == 0 or end:
            rows.append({"step": step, "epoch": round(step / steps_per_epoch, 4),
                         "train_loss": epoch_sum / epoch_n})
        if end:
            epoch_sum, epoch_n = 0.0, 0
    return rows


def test_interval_losses_recover_window_means_across_epochs():
    losses = [2.3 - 0.001 * i + 0.05 * ((i * 7) % 5) for i in range(250)]
    points = interval_losses(curve_rows(losses, steps_per_epoch=125, every=40))
    steps = [s for s, _ in points]
    assert steps == [40, 80, 120, 125, 160, 200, 240, 250]
    bounds = [0] + steps
    for (step, mean), lo in zip(points, bounds):
        assert mean == pytest.approx(statistics.fmean(losses[lo:step]))


def test_a_stalled_seed_never_escapes_and_an_escaping_one_does():
    stalled = [(100 * i, 2.0 + 0.01 * (-1) ** i) for i in range(1, 8)]
    assert plateau(stalled).escape_step is None
    assert plateau(stalled).level == pytest.approx(1.99)
    escaping = [(100, 2.09), (200, 2.0), (300, 1.97), (400, 1.85), (500, 1.5), (600, 1.4)]
    p = plateau(escaping)
    # the level is the lower of the first two windows; 1.85 is not DROP (10%) under 2.0
    assert p.level == 2.0 and (1 - DROP) * 2.0 < 1.85 and p.escape_step == 500


def test_too_short_a_curve_gives_no_verdict():
    assert plateau([(100, 2.0), (200, 1.0)]).level is None
    assert plateau([]).escape_step is None


def test_never_is_said_only_from_enough_curve_points():
    """Issue 25: on 3 points the head (2 windows) is most of the run, so a model that learned
    inside it read "never" at 60 % top-1. Too few points without an escape: "short"."""
    learned_early = [(100, 2.0), (200, 1.2), (300, 1.15)]  # 1.15 is not 10 % under 1.2
    assert plateau(learned_early).escape_step is None
    assert plateau(learned_early).verdict == "short" and plateau(learned_early).points == 3
    flat = [(100 * i, 2.0) for i in range(1, MIN_VERDICT_POINTS + 1)]
    assert plateau(flat[:-1]).verdict == "short"
    assert plateau(flat).verdict == "never"  # enough points and none falls below
    # an escape seen on a short curve is one: a clear fall under the early level
    assert plateau([(100, 2.0), (200, 2.0), (300, 1.5)]).verdict == "escaped"
    assert plateau([(100, 2.0)]).verdict == "short" and plateau([]).points == 0


def test_the_default_studys_curves_are_long_enough_for_a_verdict():
    """The committed fmnist-cpu classification curves (a row every 100 of 624 steps and at
    epoch ends: 8 windows) keep a plateau verdict under MIN_VERDICT_POINTS."""
    from importgraph import ROOT
    import json

    files = sorted((ROOT / "reports" / "curves" / "fmnist-cpu").glob("classify-*.json"))
    if not files:
        pytest.skip("no committed classification curves")
    for f in files:
        p = plateau(interval_losses(json.loads(f.read_text())))
        assert p.points >= MIN_VERDICT_POINTS and p.verdict != "short", f.name
