"""Statistics and markdown for ``benchmarks/ablations.py``: mean and spread over seeds, and the
rule that says whether a paper's direction held.

A difference counts only when it is larger than the spread of the runs it compares:

- two configurations trained separately: the pooled standard deviation
  ``sqrt((s_a^2 + s_b^2) / 2)`` of the two rows (sample std over seeds, ddof = 1);
- two inference-only variants of the same trained models (``paired``): the sample std of the
  per-seed differences, since training noise is shared and cancels in each difference.

With one seed there is no spread and no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "summarize", "pooled_spread", "paired_spread", "expected_direction", "verdict",
           "format_summary", "format_delta", "markdown_table"]

# A paper difference under half an AP point is read as the paper's "no real difference" (YOLACT's
# Fast NMS: -0.1 AP; k = 32 vs 64: +0.1 AP), not as a direction to reproduce.
PAPER_TIE = 0.5
# Our differences under a tenth of an AP point (the tables' resolution) count as none, even when
# paired runs agree on them to the last digit (a spread of 0.0).
MIN_EFFECT = 0.1


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (ddof = 1; NaN below two values) of ``n`` values."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float]) -> Summary:
    """:class:`Summary` of the finite ``values`` (NaN mean when there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if n == 0:
        return Summary(float("nan"), float("nan"), 0)
    mean = sum(finite) / n
    if n < 2:
        return Summary(mean, float("nan"), n)
    return Summary(mean, math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1)), n)


def pooled_spread(a: Summary, b: Summary) -> float:
    """``sqrt((std_a^2 + std_b^2) / 2)``: the spread of two separately trained configurations."""
    return math.sqrt((a.std ** 2 + b.std ** 2) / 2.0)


def paired_spread(a: Sequence[float], b: Sequence[float]) -> float:
    """Sample std of the per-seed differences ``a[i] - b[i]`` (same trained model, two evaluations)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return summarize([x - y for x, y in zip(a, b)]).std


def expected_direction(paper_delta: float | None, tie: float = PAPER_TIE) -> int | None:
    """+1 / -1 for a paper difference of at least ``tie`` points, 0 below it, None without one."""
    if paper_delta is None or not math.isfinite(paper_delta):
        return None
    if abs(paper_delta) < tie:
        return 0
    return 1 if paper_delta > 0 else -1


def verdict(delta: float, spread: float, paper_delta: float | None, tie: float = PAPER_TIE) -> str:
    """Did our difference ``delta`` go the paper's way, given the ``spread`` of the runs?

    ``delta`` must exceed both ``spread`` and :data:`MIN_EFFECT` to count. Returns "held",
    "reversed" or "no difference" when the paper reports a direction;
    "held (no difference)" or "differs" when the paper reports none (|paper_delta| < ``tie``);
    "no paper figure" without one; "n/a (1 seed)" when the spread is unknown.
    """
    expected = expected_direction(paper_delta, tie)
    if expected is None:
        return "no paper figure"
    if not math.isfinite(delta) or not math.isfinite(spread):
        return "n/a (1 seed)" if math.isfinite(delta) else "n/a"
    resolved = abs(delta) > max(spread, MIN_EFFECT)
    if expected == 0:
        return "differs" if resolved else "held (no difference)"
    if not resolved:
        return "no difference"
    return "held" if (delta > 0) == (expected > 0) else "reversed"


def format_summary(summary: Summary, digits: int = 1, with_n: bool = True) -> str:
    """``"30.3 ± 1.2 (3)"``; ``"30.3 (1)"`` without a spread; ``"-"`` without values."""
    if summary.n == 0:
        return "-"
    text = f"{summary.mean:.{digits}f}"
    if math.isfinite(summary.std):
        text += f" ± {summary.std:.{digits}f}"
    return text + (f" ({summary.n})" if with_n else "")


def format_delta(delta: float, spread: float | None = None, digits: int = 1) -> str:
    """``"+1.4"`` or ``"+1.4 (± 0.6)"``; ``"-"`` when ``delta`` is not finite."""
    if delta is None or not math.isfinite(delta):
        return "-"
    text = f"{delta:+.{digits}f}"
    if spread is not None and math.isfinite(spread):
        text += f" (± {spread:.{digits}f})"
    return text


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; ``|`` inside a cell is escaped."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in rows)])
