"""Replicate statistics: mean ± sample std, and Welch's t-test for "is A better than B"."""

from __future__ import annotations

import math
import statistics


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof=1; None when n < 2)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def fmt_ms(values: list[float], digits: int = 2) -> str:
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def welch(a: list[float], b: list[float]) -> dict | None:
    """Welch's unequal-variance t-test of mean(a) - mean(b) (two-sided); None when either
    sample has fewer than 2 values, or both have zero variance (the test is undefined)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return None
    res = stats.ttest_ind(a, b, equal_var=False)
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return {"diff": statistics.fmean(a) - statistics.fmean(b), "t": float(res.statistic),
            "p": float(res.pvalue), "df": df, "n_a": len(a), "n_b": len(b)}


def fmt_welch(res: dict | None) -> str:
    if res is None:
        return "n too small (need ≥ 2 seeds each, not all equal)"
    p = res["p"]
    p_txt = f"{p:.2g}" if p >= 1e-4 or math.isnan(p) else "<1e-4"
    return f"Δ {res['diff']:+.2f} pt, t = {res['t']:.2f}, df = {res['df']:.1f}, p = {p_txt}"
