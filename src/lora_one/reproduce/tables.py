"""Runs → rows → markdown for report.py and scripts/make_table.py: a task's table, a row per method (and
setting): the metric and held-out loss as mean ± sample std over seeds, each with its paired difference
to LoRA and its 95 % interval (stats.py), one-class runs, steps, wall time and the published number.
A row reads its runs (study records or results.json, which share these keys) through records.py; its
metric comes with it, since a sweep's benchmarks name their headline metric in more ways than records'."""
import statistics
from dataclasses import dataclass

from lora_one.reproduce import stats
from lora_one.reproduce.records import held_out, wall_seconds

LORA = "LoRA"  # the method every paired Δ column is taken against
METRIC_NAMES = {"accuracy": "accuracy (%)", "matthews_correlation": "Matthews corr. (×100)", "f1": "F1 (%)"}


@dataclass
class RowSummary:
    method: str
    rate: str                     # the learning-rate cell
    published: str                # published.published_cell's text
    runs: dict[int, dict]         # seed → the run's record (or results.json)
    scores: dict[int, float]      # seed → metric in the table's units; empty: the runs scored no benchmark
    benchmark: str | None = None  # whose per-class counts tell one-class runs
    settings: tuple[str, ...] = ()  # a cell per setting column, after the method
    planned: int | None = None    # seeds planned; None: as many as ran
    reference: "RowSummary | None" = None  # the row the paired Δ columns subtract (LoRA's)

    @property
    def losses(self) -> dict[int, float]:
        return {seed: loss for seed, record in self.runs.items() if (loss := held_out(record)) is not None}

    @property
    def one_class(self) -> int | None:
        """Runs predicting one class; None unless every run has the benchmark's per-class counts."""
        counts = [((r.get("eval") or {}).get(self.benchmark) or {}).get("predicted_counts") for r in self.runs.values()]
        return None if None in counts else sum(map(stats.is_degenerate, counts))


def metric_label(name: str | None) -> str:
    """A metric's column label in the table's units (percent; MCC ×100); "metric" before any run scored."""
    return "metric" if name is None else METRIC_NAMES.get(name, f"{name} (%)")


def pm(values: list[float], digits: int) -> str:
    """mean ± sample std; a single seed has no spread, and says so rather than show ± 0."""
    mean, std = stats.mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f} (1 seed)"


def paired_text(difference: stats.Paired | None, digits: int) -> str:
    if difference is None or difference.n < 2:
        return "–"
    mark = " ✓" if difference.resolved else ""
    return f"{difference.mean:+.{digits}f} [{difference.low:+.{digits}f}, {difference.high:+.{digits}f}]{mark}"


def row(summary: RowSummary) -> str:
    cells = [summary.method, *summary.settings, summary.rate]
    if not summary.runs:
        cells += [f"**missing** (0 of {summary.planned} seeds)", *["–"] * 6]
    else:
        n, runs, reference = len(summary.runs), summary.runs.values(), summary.reference
        planned = "" if summary.planned in (None, n) else f" of {summary.planned}"
        seeds = "" if n == 1 and not planned else f" (n={n}{planned})"  # pm already says "1 seed"
        one_class, walls = summary.one_class, [wall_seconds(r) for r in runs if r.get("provenance")]
        cells += [f"{pm(list(summary.scores.values()), 2)}{seeds}" if summary.scores else "– (no benchmark)",
                  paired_text(reference and stats.paired_difference(summary.scores, reference.scores), 2),
                  pm(list(summary.losses.values()), 4),
                  paired_text(reference and stats.paired_difference(summary.losses, reference.losses), 4),
                  "–" if one_class is None else f"{one_class} of {n}",
                  "/".join(str(s) for s in sorted({r["steps"] for r in runs})),
                  f"{statistics.fmean(walls):.0f} s" if walls else "–"]
    return "| " + " | ".join([*cells, summary.published]) + " |"


def markdown(rows: list[RowSummary], metric: str, rate_header: str, settings: tuple[str, ...] = (),
             baseline: tuple[str, float, int] | None = None) -> str:
    """A task's table: the header (`metric` as metric_label names it, a column per setting after the
    method), the majority-class baseline (label, metric, rows) when given, then the rows."""
    header = ["method", *settings, rate_header, f"{metric}, mean ± std", "Δ vs LoRA, paired [95 % CI]",
              "held-out loss", "Δ loss vs LoRA, paired [95 % CI]", "one-class runs", "steps", "wall time per run",
              "published, paper scale"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * len(settings) + "---:|" * 8 + "---|"]
    if baseline is not None:
        label, value, _ = baseline
        cells = [f"majority class (always `{label}`, no run)", *["–"] * (len(settings) + 1), f"{value:.2f}", *["–"] * 7]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [row(summary) for summary in rows]
    return "\n".join(lines) + "\n"
