"""The markdown tables of ``benchmarks/ablations.py``: our mean ± std over seeds beside the paper's
figures, each difference against its reference row, and whether the paper's direction held."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from _ablation_specs import Row, Table
from _ablation_stats import (Summary, format_delta, format_summary, markdown_table, paired_spread, pooled_spread,
                             summarize, verdict)

__all__ = ["Comparison", "RunMetrics", "collect", "compare", "render_table", "render_directions", "summary_json"]

# (training, evaluation) -> {seed: evaluation dict as in result.json}
RunMetrics = Mapping[tuple[str, str], Mapping[int, Mapping[str, Any]]]


def collect(results: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """Index run results (``result.json`` dicts) by (training, evaluation), then by seed."""
    out: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for result in results:
        for name, metrics in result["evaluations"].items():
            out.setdefault((result["training"], name), {})[int(result["seed"])] = metrics
    return out


# Metrics kept as they are (milliseconds, a correlation), read from the run's "default" evaluation
# where the row's own evaluation lacks them (the MaskIoU correlation is measured once per model).
_PLAIN_METRICS = ("ms_per_image", "suppress_ms_per_image", "maskiou_pearson")


def _values(runs: RunMetrics, row: Row, metric: str, iou_type: str = "segm") -> dict[int, float]:
    """Per-seed values in percent (AP keys), milliseconds (time keys) or as measured (Pearson r);
    missing ones left out."""
    out = {}
    plain = metric in _PLAIN_METRICS
    defaults = runs.get((row.training, "default"), {})
    for seed, metrics in runs.get((row.training, row.evaluation), {}).items():
        if plain:
            value = metrics.get(metric, defaults.get(seed, {}).get(metric) if metric == "maskiou_pearson" else None)
        else:
            value = metrics.get(iou_type, {}).get(metric)
        if value is not None and math.isfinite(float(value)):
            out[seed] = float(value) if plain else 100.0 * float(value)
    return out


@dataclass(frozen=True)
class Comparison:
    """A row against its reference row: differences in AP points and the verdict on AP."""

    delta_ap: float
    spread: float
    paired: bool
    delta_ap75: float
    paper_delta: float | None
    paper_delta_ap75: float | None
    verdict: str


def _delta(a: Mapping[int, float], b: Mapping[int, float]) -> float:
    return summarize(list(a.values())).mean - summarize(list(b.values())).mean


def _paper_delta(row: Row, ref: Row, index: int) -> float | None:
    if index == 0 and row.paper_delta is not None:
        return row.paper_delta
    if row.paper[index] is None or ref.paper[index] is None:
        return None
    return row.paper[index] - ref.paper[index]


def compare(runs: RunMetrics, row: Row, ref: Row) -> Comparison:
    """``row`` against ``ref``. Same training: paired (spread of per-seed differences over the seeds
    both have); different trainings: the pooled std of the two rows."""
    ours, base = _values(runs, row, "AP"), _values(runs, ref, "AP")
    paired = row.training == ref.training
    if paired:
        seeds = sorted(set(ours) & set(base))
        spread = paired_spread([ours[s] for s in seeds], [base[s] for s in seeds])
        delta = summarize([ours[s] - base[s] for s in seeds]).mean
    else:
        spread = pooled_spread(summarize(list(ours.values())), summarize(list(base.values())))
        delta = _delta(ours, base)
    delta75 = _delta(_values(runs, row, "AP75"), _values(runs, ref, "AP75"))
    paper = _paper_delta(row, ref, 0)
    return Comparison(delta, spread, paired, delta75, paper, _paper_delta(row, ref, 2),
                      verdict(delta, spread, paper))


def _paper_cell(row: Row) -> str:
    if any(v is not None for v in row.paper):
        return " / ".join("-" if v is None else f"{v:.1f}" for v in row.paper)
    return row.paper_note or "-"


def _paper_delta_cell(value: float | None) -> str:
    return "-" if value is None else format_delta(value)


def _summary(runs: RunMetrics, row: Row, metric: str, with_n: bool = False, digits: int = 1) -> str:
    values = _values(runs, row, metric)
    return format_summary(summarize(list(values.values())), digits, with_n) if values else "-"


def render_table(table: Table, runs: RunMetrics) -> str:
    """One table: the title, a note line, then the markdown table."""
    header = ["configuration", "mask AP (n seeds)", "AP50", "AP75", "paper AP / AP50 / AP75",
              "Δ AP ours (± spread)", "Δ AP paper", "Δ AP75 ours / paper", "direction"]
    if table.timed:
        header += ["ms/img", "NMS ms/img", "paper ms/img"]
    if table.maskiou:
        header += ["MaskIoU Pearson r"]
    lines = []
    for row in table.rows:
        cells = [row.label, _summary(runs, row, "AP", with_n=True), _summary(runs, row, "AP50"),
                 _summary(runs, row, "AP75"), _paper_cell(row)]
        if row.versus is None:
            cells += ["(reference)", "", "", ""]
        else:
            c = compare(runs, row, table.rows[row.versus])
            tag = " paired" if c.paired else ""
            delta = format_delta(c.delta_ap)
            if math.isfinite(c.spread):
                delta += f" (±{c.spread:.1f}{tag})"
            cells += [delta, _paper_delta_cell(c.paper_delta),
                      f"{format_delta(c.delta_ap75)} / {_paper_delta_cell(c.paper_delta_ap75)}", c.verdict]
        if table.timed:
            cells += [_summary(runs, row, "ms_per_image"), _summary(runs, row, "suppress_ms_per_image", digits=2),
                      "-" if row.paper_ms is None else f"{row.paper_ms:.1f}"]
        if table.maskiou:
            cells += [_summary(runs, row, "maskiou_pearson", digits=2)]
        lines.append(cells)
    return f"### {table.title}\n\n{table.note}\n\n{markdown_table(header, lines)}\n"


def render_directions(tables: Sequence[Table], runs: RunMetrics) -> str:
    """A list of every comparison and its verdict, grouped by verdict."""
    groups: dict[str, list[str]] = {}
    for table in tables:
        for row in table.rows:
            if row.versus is None:
                continue
            ref = table.rows[row.versus]
            c = compare(runs, row, ref)
            paper = "-" if c.paper_delta is None else format_delta(c.paper_delta)
            groups.setdefault(c.verdict, []).append(
                f"{row.label} vs {ref.label}: ours {format_delta(c.delta_ap, c.spread)}, paper {paper}")
    order = ["held", "held (no difference)", "no difference", "differs", "reversed", "no paper figure",
             "n/a (1 seed)", "n/a"]
    parts = []
    for name in order + [k for k in groups if k not in order]:
        if name in groups:
            parts.append(f"**{name}**\n" + "\n".join(f"- {item}" for item in groups[name]))
    return "\n\n".join(parts) + "\n"


def summary_json(tables: Sequence[Table], runs: RunMetrics) -> list[dict[str, Any]]:
    """The tables as data (for the JSON next to the markdown)."""
    out = []
    for table in tables:
        rows = []
        for row in table.rows:
            item: dict[str, Any] = {"label": row.label, "training": row.training, "evaluation": row.evaluation,
                                    "paper": list(row.paper), "paper_delta": row.paper_delta}
            for metric in ("AP", "AP50", "AP75", *_PLAIN_METRICS):
                s: Summary = summarize(list(_values(runs, row, metric).values()))
                item[metric] = {"mean": _none(s.mean), "std": _none(s.std), "n": s.n}
            if row.versus is not None:
                c = compare(runs, row, table.rows[row.versus])
                item["versus"] = table.rows[row.versus].label
                item.update(delta_ap=_none(c.delta_ap), spread=_none(c.spread), paired=c.paired,
                            paper_delta_ap=c.paper_delta, verdict=c.verdict)
            rows.append(item)
        out.append({"title": table.title, "block": table.block, "note": table.note, "rows": rows})
    return out


def _none(value: float) -> float | None:
    return value if math.isfinite(value) else None
