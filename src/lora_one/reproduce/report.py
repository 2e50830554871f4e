"""From a study's committed records (records.py) to REPRODUCTION.md and its figures, and nothing else:
a fresh clone regenerates both byte for byte (no clock, no host name, no path outside the records).

Per task: tables.py's table (the rate chosen on held-out training rows) under a majority-class
baseline row, the per-seed values, the learning-rate selection, the loss-curve comparison and one
verdict line per claim. Statistics are those of stats.py; "resolved" means a paired 95 % interval that excludes 0."""
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lora_one.reproduce import stats, tables
from lora_one.reproduce.figures import plot_task
from lora_one.reproduce.plan import Cell, Study, Task, final_cells, tuning_cells
from lora_one.reproduce.published import published_cell, published_table
from lora_one.reproduce.records import degenerate, held_out, mean_curve, metric, metric_name
from lora_one.reproduce.runner import best_rate, grid_losses, tuning_plan
from lora_one.reproduce.tables import LORA

METRIC_RANGE = {"matthews_correlation": (-100.0, 100.0)}  # in the table's units; others 0-100
SPECTRAL_ONLY, LORA_ONE = "spectral init only", "LoRA-One"
CELLS_MARKER = re.compile(r"<!-- records: (\d+) -->")


@dataclass
class MethodRuns:
    method: str
    learning_rate: float | None  # chosen on held-out training rows; None: untrained, or tuning unfinished
    trains: bool
    planned: int                 # seeds planned
    grid: dict[float, float | None] = field(default_factory=dict)  # rate → mean held-out loss at the tuning seeds
    runs: dict[int, dict] = field(default_factory=dict)  # seed → the finished seed run's record

    def values(self, read: Callable[[dict], float | None]) -> dict[int, float]:
        return {seed: v for seed, record in self.runs.items() if (v := read(record)) is not None}


@dataclass
class TaskRuns:
    task: Task
    methods: list[MethodRuns]
    tuning_records: list[dict]
    label_words: list[str]

    def of(self, method: str) -> MethodRuns | None:
        return next((m for m in self.methods if m.method == method and m.runs), None)


def collect(study: Study, record_of: Callable[[Cell], dict | None],
            label_words: Callable[[str], list[str]]) -> list[TaskRuns]:
    """The finished cells (`record_of` a cell → its record or None), arranged by task and method, the
    rates chosen as the runner chooses them."""
    tasks = []
    for task in study.tasks:
        grids, _ = tuning_plan(study, task, record_of)
        losses = grid_losses(study, task, record_of, grids)
        chosen = {method: best_rate(rates) for method, rates in losses.items()}  # as choose_learning_rates, one read
        methods = [MethodRuns(m.name, chosen.get(m.name), m.trains, len(study.seeds), losses.get(m.name, {}))
                   for m in study.methods]
        for cell in final_cells(study, task, chosen):
            if (record := record_of(cell)) is not None:
                next(m for m in methods if m.method == cell.method).runs[cell.seed] = record
        tuning = [r for cell in tuning_cells(study, task, grids) if (r := record_of(cell)) is not None]
        tasks.append(TaskRuns(task, methods, tuning, label_words(task.name) if task.benchmark == "glue" else []))
    return tasks


def task_metric(runs: TaskRuns) -> str | None:
    """The task's metric as its first finished run names it; None before any."""
    finished = [r for m in runs.methods for r in m.runs.values()]
    return metric_name(finished[0], runs.task.benchmark) if finished else None


def majority_baseline(runs: TaskRuns) -> tuple[str, float, int] | None:
    """(the majority label, its metric in percent, rows) on the scored dev rows, from their gold labels
    (the same rows in every run); None for a task without per-class counts."""
    from lora_one.eval.glue import task_metrics

    finished = [r for m in runs.methods for r in m.runs.values()]
    if runs.task.benchmark != "glue" or not finished or "gold_counts" not in finished[0]["eval"]["glue"]:
        return None
    scored = finished[0]["eval"]["glue"]
    gold = [word for word in runs.label_words for _ in range(scored["gold_counts"].get(word, 0))]
    label = stats.majority_label(scored["gold_counts"], runs.label_words)
    metrics = task_metrics(runs.task.name, runs.label_words, gold, [label] * len(gold))
    return label, 100 * metrics[scored["main_metric"]], len(gold)


# --- tables


def rate_text(method: MethodRuns) -> str:
    if not method.trains:
        return "– (no step)"
    if method.learning_rate is None:
        return "**missing** (tuning unfinished)"
    rates = sorted(method.grid)
    edge = " (grid edge)" if len(rates) > 1 and method.learning_rate in (rates[0], rates[-1]) else ""
    return f"{method.learning_rate:g}{edge}"


def row_summary(method: MethodRuns, runs: TaskRuns) -> tables.RowSummary:
    lora = runs.of(LORA)
    return tables.RowSummary(method.method, rate_text(method), published_cell(runs.task.name, method.method),
                             method.runs, method.values(metric(runs.task.benchmark)), runs.task.benchmark,
                             planned=method.planned,
                             reference=None if lora is None or lora is method else row_summary(lora, runs))


def task_table(runs: TaskRuns) -> str:
    rows = [row_summary(method, runs) for method in runs.methods]
    return tables.markdown(rows, tables.metric_label(task_metric(runs)), "lr chosen", baseline=majority_baseline(runs))


def per_seed_table(runs: TaskRuns) -> str:
    """Every seed run's metric and held-out loss, in a collapsible block."""
    seeds = sorted({seed for m in runs.methods for seed in m.runs})
    if not seeds:
        return ""
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---:|" * len(seeds)]
    for method in (m for m in runs.methods if m.runs):
        cells = []
        for seed in seeds:
            record = method.runs.get(seed)
            if record is None:
                cells.append("–")
                continue
            loss = held_out(record)
            text = f"{metric(runs.task.benchmark)(record):.2f} / {'diverged' if loss is None else f'{loss:.4f}'}"
            one_class = runs.task.benchmark == "glue" and degenerate(record, "glue")
            cells.append(text + (" (one class)" if one_class else ""))
        lines.append(f"| {method.method} | " + " | ".join(cells) + " |")
    label = tables.metric_label(task_metric(runs))
    return f"<details><summary>Per seed: {label} / held-out loss</summary>\n\n" + "\n".join(lines) + "\n\n</details>\n"


def tuning_table(runs: TaskRuns, tuning_seeds: tuple[int, ...]) -> str:
    """The mean held-out loss of every grid point (the chosen one in bold)."""
    trained = [m for m in runs.methods if m.trains]
    rates = sorted({rate for m in trained for rate in m.grid})
    if not rates:
        return ""
    lines = ["| method | " + " | ".join(f"lr {r:g}" for r in rates) + " |", "|---|" + "---:|" * len(rates)]
    for method in trained:
        cells = []
        for rate in rates:
            loss = method.grid.get(rate, "not in grid")
            text = "missing" if loss is None else loss if isinstance(loss, str) else f"{loss:.4f}"
            cells.append(f"**{text}**" if rate == method.learning_rate else text)
        lines.append(f"| {method.method} | " + " | ".join(cells) + " |")
    seeds = ", ".join(str(s) for s in tuning_seeds)
    at_edge = [m.method for m in trained if m.learning_rate is not None and "grid edge" in rate_text(m)]
    note = (f"\nChosen at the grid's edge after its extensions, so the best rate may lie beyond it: "
            f"{', '.join(at_edge)}.\n" if at_edge else "")
    return (f"Learning-rate selection: the held-out loss (rows kept out of the training file, never dev or test), "
            f"mean over tuning seeds {seeds}; the chosen rate in bold.\n\n" + "\n".join(lines) + "\n" + note)


def curve_table(runs: TaskRuns) -> str:
    """Per trained method: the first evaluated step whose mean held-out curve reaches LoRA's final mean
    held-out loss, and the held-out loss averaged over training (area under the curve / steps)."""
    lora = runs.of(LORA)
    if lora is None:
        return ""
    target = statistics.fmean(runs.of(LORA).values(held_out).values())
    lines = [f"Target: LoRA's final mean held-out loss, {target:.4f}. A step is the first evaluated step at or below "
             "it on the method's mean curve over seeds "
             "(so a crossing lies within one evaluation interval before it).\n",
             "| method | first step at target | held-out loss averaged over training |", "|---|---:|---:|"]
    for method in (m for m in runs.methods if m.runs):
        points = mean_curve(list(method.runs.values()))
        step = stats.first_step_at_or_below(points, target)
        average = stats.mean_over_steps(points)
        lines.append(f"| {method.method} | {'not reached' if step is None else step} | "
                     f"{'–' if average is None else f'{average:.4f}'} |")
    return "\n".join(lines) + "\n"


# --- verdicts


def verdict_init_alone(runs: TaskRuns) -> str:
    """(a) the spectral init alone (no step) vs the base model, on the held-out rows, paired by seed."""
    method = runs.of(SPECTRAL_ONLY)
    if method is None:
        return "(a) init alone lowers held-out loss: **not measured** (no spectral-init-only run finished)."
    base = method.values(lambda r: r["eval_loss_base"])
    init = method.values(lambda r: r["eval_loss_after_init"])
    difference = stats.paired_difference(init, base)
    verdict = "yes (resolved)" if difference.resolved and difference.high < 0 else \
        "no (resolved: higher)" if difference.resolved else "not resolved"
    return (f"(a) init alone lowers held-out loss: **{verdict}**: base {statistics.fmean(base.values()):.4f} "
            f"→ after the LoRA-One init, no step {statistics.fmean(init.values()):.4f}; paired difference "
            f"{tables.paired_text(difference, 4)} over {difference.n} seeds.")


def verdict_speed(runs: TaskRuns, curve_every: int) -> str:
    """(b), symmetric: for LoRA's final mean held-out loss as the common target, the first evaluated step
    at which each mean curve reaches it, and their ratio."""
    claim = "(b) steps to reach LoRA's final held-out loss, LoRA-One vs LoRA"
    lora, one = runs.of(LORA), runs.of(LORA_ONE)
    if lora is None or one is None or len(mean_curve(list(lora.runs.values()))) < 2:
        return f"{claim}: **not measured** (LoRA or LoRA-One runs, or their held-out loss curves, missing)."
    target = statistics.fmean(lora.values(held_out).values())
    lora_step = stats.first_step_at_or_below(mean_curve(list(lora.runs.values())), target)
    one_step = stats.first_step_at_or_below(mean_curve(list(one.runs.values())), target)
    resolution = f"the curves are measured every {curve_every} steps, so each step is exact to within {curve_every}"
    if one_step is None:
        return f"{claim}: LoRA-One **does not reach** {target:.4f}; LoRA reaches it at step {lora_step} ({resolution})."
    ratio = f"{one_step / lora_step:.2f}×" if lora_step else "–"
    return (f"{claim}: LoRA-One at step **{one_step}**, LoRA at step **{lora_step}** "
            f"(ratio {ratio}; target {target:.4f}, LoRA's mean final held-out loss; {resolution}).")


def verdict_ranking(runs: TaskRuns) -> str:
    """(c) per method the paired difference to LoRA on the benchmark metric: resolved or not; methods
    with one-class runs and the majority baseline said beside."""
    rows = [row_summary(method, runs) for method in runs.methods if method.runs]
    others = [row for row in rows if row.reference is not None]  # none until LoRA has finished
    if not others:
        return "(c) benchmark vs LoRA: **not measured** (LoRA or every other method unfinished)."
    parts = []
    for row in others:
        difference = stats.paired_difference(row.scores, row.reference.scores)
        word = (("better" if difference.mean > 0 else "worse") + " (resolved)" if difference.resolved
                else "tie (not resolved)")
        parts.append(f"{row.method} {word}, {tables.paired_text(difference, 2)}"
                     + (f", {row.one_class} of {len(row.runs)} runs one-class" if row.one_class else ""))
    text = "(c) benchmark vs LoRA, paired over seeds: " + "; ".join(parts) + "."
    if (baseline := majority_baseline(runs)) is not None:
        above = [row.method for row in rows if stats.confidence_interval(list(row.scores.values()))[0] > baseline[1]]
        text += (f" Clearly above the majority class ({baseline[1]:.2f}; the 95 % interval of the mean above it): "
                 f"{', '.join(above) or 'none'}.")
    return text


# --- the document


def provenance_lines(records: list[dict]) -> list[str]:
    if not records:
        return ["- no run has finished yet"]

    def counted(values) -> str:
        counts = Counter(values)
        return ", ".join(f"{v} ({n} runs)" if len(counts) > 1 else str(v) for v, n in sorted(counts.items()))

    provenance = [r["provenance"] for r in records]
    commits = [r["code"]["commit"][:12] + (" + uncommitted changes" if r["code"]["dirty"] else "") for r in records]
    kernels = [", ".join(f"{k}={v}" for k, v in sorted((r.get("kernels") or {}).items())) or "none" for r in records]
    return [f"- code: state {counted(r['code']['digest'] for r in records)}, computed at commit {counted(commits)}",
            f"- machine: {counted(machine(p) for p in provenance)}; kernels pinned: {counted(kernels)}",
            f"- python {counted(p['python'] for p in provenance)}; "
            f"{counted(', '.join(f'{k} {v}' for k, v in sorted(p['packages'].items()) if v) for p in provenance)}",
            f"- runs from {min(p['start'] for p in provenance)} to {max(p['end'] for p in provenance)}"]


def machine(provenance: dict) -> str:
    return f"{provenance.get('cpu')}, {provenance.get('torch_threads')} torch threads"


def status_lines(study: Study, tasks: list[TaskRuns]) -> list[str]:
    planned_tuning = sum(len(m.grid) for t in tasks for m in t.methods) * len(study.tuning_seeds)
    finished_tuning = sum(len(t.tuning_records) for t in tasks)
    planned_final = len(study.tasks) * len(study.methods) * len(study.seeds)
    finished_final = sum(len(m.runs) for t in tasks for m in t.methods)
    missing = [f"{t.task.name} {m.method} ({left} seed{'s' if left > 1 else ''})" for t in tasks for m in t.methods
               if (left := m.planned - len(m.runs)) > 0]
    lines = [f"- tuning runs finished: {finished_tuning} of {planned_tuning} (the grids as extended so far); "
             f"seed runs finished: {finished_final} of {planned_final}",
             "- missing: " + ("; ".join(missing) if missing else "nothing: every cell is filled from real runs")]
    trained = [r for t in tasks for r in t.tuning_records + [r for m in t.methods for r in m.runs.values()]
               if r.get("steps")]
    if trained:
        per_step = statistics.fmean(r["train_time_s"] / r["steps"] for r in trained)
        lines.append(f"- pace: {per_step:.2f} s per optimizer step (mean over {len(trained)} trained runs)")
    return lines


def task_section(runs: TaskRuns, study: Study, figures: dict[str, str]) -> str:
    parts = [f"## {runs.task.name}\n",
             f"Scored on {runs.task.evaluated_on}. ✓: a paired 95 % interval that excludes 0.\n",
             task_table(runs), per_seed_table(runs), tuning_table(runs, study.tuning_seeds), curve_table(runs),
             "Verdicts:\n",
             "\n".join(f"- {line}" for line in (verdict_init_alone(runs), verdict_speed(runs, study.curve_every),
                                                 verdict_ranking(runs))) + "\n"]
    parts += [f"![{runs.task.name} {kind}]({path})\n" for kind, path in figures.items()]
    return "\n".join(p for p in parts if p)


def reproduction_markdown(study: Study, tasks: list[TaskRuns], records: list[dict], figures: dict[str, dict[str, str]],
                          extra_sections: list[str]) -> str:
    sizing = "\n".join(f"- {key}: {value}" for key, value in study.sizing.items())
    sections = "\n".join(task_section(t, study, figures.get(t.task.name, {})) for t in tasks)
    extra = "\n".join(extra_sections)
    return f"""# Reproduction at CPU scale

<!-- Generated by `python scripts/reproduce.py report` from the records in docs/reproduction/cells/: never edit
by hand. -->
<!-- records: {len(records)} -->

Every number below is computed from the committed records in `docs/reproduction/cells/` (one JSON per run):
`python scripts/reproduce.py report` regenerates this file and its figures from them byte for byte, and
`python scripts/reproduce.py verify <cell>` re-runs a cell and compares. The study: the methods of the LoRA-One
paper's comparison on SmolLM2-135M, a learning-rate grid per method chosen on held-out training rows, then
seeds at the chosen rate. A small, CPU-sized study, not the paper's setting (7B models, thousands of steps),
whose published numbers stand beside it only for orientation.

## Provenance

{chr(10).join(provenance_lines(records))}

## Status

{chr(10).join(status_lines(study, tasks))}

## Sizing

{sizing}

{sections}
{extra}
## Published numbers (paper scale, as quoted in the reproduction issue)

{published_table()}"""


def records_in_report(markdown: Path) -> int:
    """How many records the report at `markdown` was built from (0 if none is there)."""
    if not markdown.exists():
        return 0
    found = CELLS_MARKER.search(markdown.read_text())
    return int(found.group(1)) if found else 0


def write_reproduction(study: Study, record_of: Callable[[Cell], dict | None], label_words: Callable[[str], list[str]],
                       markdown_path: Path, figure_dir: Path, extra_sections: list[str] = (),
                       force: bool = False) -> list[Path]:
    """REPRODUCTION.md and its figures (per task with finished runs: the grid, the loss curves, the
    metric). Refuses to replace a report built from more records, unless `force`."""
    tasks = collect(study, record_of, label_words)
    records = [r for t in tasks for r in t.tuning_records + [r for m in t.methods for r in m.runs.values()]]
    before = records_in_report(markdown_path)
    if len(records) < before and not force:
        raise ValueError(f"{markdown_path.name} holds {before} records, these {len(records)}: "
                         "refusing to replace it with less (pass --force to)")
    figure_dir.mkdir(parents=True, exist_ok=True)
    figures, written = {}, []
    for runs in tasks:
        paths = plot_task(runs, figure_dir, tables.metric_label(task_metric(runs)),
                          METRIC_RANGE.get(task_metric(runs), (0.0, 100.0)), majority_baseline(runs))
        written += paths.values()
        figures[runs.task.name] = {kind: str(path.relative_to(markdown_path.parent)) for kind, path in paths.items()}
    markdown_path.write_text(reproduction_markdown(study, tasks, records, figures, list(extra_sections)))
    return [markdown_path, *written]
