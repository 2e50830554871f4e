"""From the study's run directories to REPRODUCTION.md: per task, the table (method | lr chosen |
metric mean ± std over seeds | held-out loss | steps | wall time | published), the learning-rate
selection behind it, and one verdict line per claim, all computed from the results.json files.

Statistics: mean and sample standard deviation over seeds; 95 % confidence intervals are Student-t
intervals mean ± t(0.975, n−1)·s/√n (n seeds). A cell with fewer finished seeds than planned says
so; one with none is marked missing."""
import datetime
import math
import platform
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lora_one.reproduce.plan import Study, Task, final_cells, tuning_cells
from lora_one.reproduce.published import published_cell, published_table
from lora_one.reproduce.runner import choose_learning_rates, read_results

# Two-sided 95 % Student-t critical values t(0.975, df), df = 1..10; beyond, the normal 1.96.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
METRIC_NAMES = {"accuracy": "accuracy (%)", "matthews_correlation": "Matthews corr. (×100)", "f1": "F1 (%)"}
SPECTRAL_ONLY, LORA, LORA_ONE = "spectral init only", "LoRA", "LoRA-One"


@dataclass
class MethodRuns:
    method: str
    learning_rate: float | None  # chosen on the validation split; None: untrained, or no tuning run finished
    trains: bool
    planned: int                 # seeds planned
    grid: tuple[int, int] = (0, 0)  # (tuning runs finished, grid size)
    runs: list[dict] = field(default_factory=list)  # the finished seed runs' results


@dataclass
class TaskRuns:
    task: Task
    held_out_losses: dict[str, dict[float, float | None]]  # tuning: method → rate → held-out loss (None: not finished)
    methods: list[MethodRuns]
    tuning_runs: list[dict] = field(default_factory=list)  # the finished tuning runs' results

    def of(self, method: str) -> MethodRuns | None:
        return next((m for m in self.methods if m.method == method and m.runs), None)


def collect(study: Study, root: Path) -> list[TaskRuns]:
    """What has finished under `root`, arranged by task and method (the rate chosen as the runner does)."""
    tasks = []
    for task in study.tasks:
        tuning = [(cell, read_results(root, cell)) for cell in tuning_cells(study, task)]
        chosen = choose_learning_rates(tuning)
        losses = {}
        for cell, results in tuning:
            losses.setdefault(cell.method, {})[cell.learning_rate] = None if results is None else results["eval_loss"]
        methods = [MethodRuns(m.name, chosen.get(m.name), m.trains, len(study.seeds),
                              (sum(v is not None for v in losses.get(m.name, {}).values()), len(losses.get(m.name, {}))))
                   for m in study.methods]
        for cell in final_cells(study, task, chosen):
            results = read_results(root, cell)
            if results is not None:
                next(m for m in methods if m.method == cell.method).runs.append(results)
        tasks.append(TaskRuns(task, losses, methods, [results for _, results in tuning if results is not None]))
    return tasks


def metric_of(results: dict, benchmark: str) -> tuple[str, float]:
    """(name, value) of the benchmark's headline metric: GLUE's main_metric (per task), else accuracy."""
    metrics = results["eval"][benchmark]
    name = metrics.get("main_metric", "accuracy")
    return name, metrics[name]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def confidence_interval(values: list[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean; a single value is its own (degenerate) interval."""
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return mean, mean
    half = (T_975[n - 2] if n - 1 <= len(T_975) else 1.96) * std / math.sqrt(n)
    return mean - half, mean + half


def wall_seconds(results: dict) -> float:
    record = results["provenance"]
    return (datetime.datetime.fromisoformat(record["end"]) - datetime.datetime.fromisoformat(record["start"])).total_seconds()


def scores(method: MethodRuns, task: Task) -> list[float]:
    return [metric_of(r, task.benchmark)[1] for r in method.runs]


def seeds_note(method: MethodRuns) -> str:
    return "" if len(method.runs) == method.planned else f" ({len(method.runs)} of {method.planned} seeds)"


def rate_text(method: MethodRuns) -> str:
    if not method.trains:
        return "– (no step)"
    if method.learning_rate is None:
        return "**missing** (no tuning run finished)"
    finished, size = method.grid
    return f"{method.learning_rate:g}" + ("" if finished == size else f" (provisional: {finished} of {size} grid points)")


def table_row(method: MethodRuns, task: Task) -> str:
    published = published_cell(task.name, method.method)
    if not method.runs:
        missing = f"**missing** (0 of {method.planned} seeds)"
        return f"| {method.method} | {rate_text(method)} | {missing} | – | – | – | {published} |"
    mean, std = mean_std([100 * v for v in scores(method, task)])
    loss_mean, loss_std = mean_std([r["eval_loss"] for r in method.runs])
    steps = "/".join(str(s) for s in sorted({r["steps"] for r in method.runs}))
    wall = statistics.fmean(wall_seconds(r) for r in method.runs)
    return (f"| {method.method} | {rate_text(method)} | {mean:.2f} ± {std:.2f}{seeds_note(method)} | "
            f"{loss_mean:.4f} ± {loss_std:.4f} | {steps} | {wall:.0f} s | {published} |")


def metric_label(runs: TaskRuns) -> str:
    finished = [r for m in runs.methods for r in m.runs]
    if not finished:
        return "metric"
    name = metric_of(finished[0], runs.task.benchmark)[0]
    return METRIC_NAMES.get(name, name)


def task_table(runs: TaskRuns) -> str:
    header = (f"| method | lr chosen | {metric_label(runs)}, mean ± std over seeds | held-out loss | steps | "
              f"wall time per run | published, paper scale |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---|"]
    lines += [table_row(method, runs.task) for method in runs.methods]
    return "\n".join(lines) + "\n"


def tuning_table(runs: TaskRuns) -> str:
    """The held-out loss of every grid point (the chosen one in bold)."""
    rates = sorted({rate for by_rate in runs.held_out_losses.values() for rate in by_rate})
    lines = ["| method | " + " | ".join(f"lr {r:g}" for r in rates) + " |", "|---|" + "---:|" * len(rates)]
    for method, by_rate in runs.held_out_losses.items():
        chosen = next(m.learning_rate for m in runs.methods if m.method == method)
        cells = []
        for rate in rates:
            loss = by_rate.get(rate)
            text = "missing" if loss is None else f"{loss:.4f}"
            cells.append(f"**{text}**" if rate == chosen and loss is not None else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + grid_edge_note(runs, rates)


def grid_edge_note(runs: TaskRuns, rates: list[float]) -> str:
    """Methods whose chosen rate is the grid's lowest or highest: their best rate may lie outside it."""
    edges = {rates[0]: "lowest", rates[-1]: "highest"} if len(rates) > 1 else {}
    at_edge = [f"{m.method} ({edges[m.learning_rate]})" for m in runs.methods if m.learning_rate in edges]
    if not at_edge:
        return ""
    return (f"\nChosen at the grid's edge, so the best rate may lie beyond it: {', '.join(at_edge)}.\n")


def verdict_init_alone(runs: TaskRuns) -> str:
    """(a) the spectral init alone (no step) vs the base model, on the held-out rows."""
    method = runs.of(SPECTRAL_ONLY)
    if method is None:
        return "(a) init alone lowers held-out loss: **not measured** (no spectral-init-only run finished)."
    base = [r["eval_loss_base"] for r in method.runs]
    init = [r["eval_loss_after_init"] for r in method.runs]
    lower = sum(i < b for b, i in zip(base, init))
    verdict = "yes" if lower == len(base) else "no" if lower == 0 else "mixed"
    change = 100 * (statistics.fmean(init) / statistics.fmean(base) - 1)
    return (f"(a) init alone lowers held-out loss: **{verdict}**: base {statistics.fmean(base):.4f} → after the "
            f"LoRA-One init, no step {statistics.fmean(init):.4f} ({change:+.1f} %), lower in {lower} of {len(base)} seeds.")


def held_out_by_step(method: MethodRuns) -> list[tuple[int, list[float]]]:
    """(step, the seeds' held-out losses at it) for every step some seed's `eval_loss_curve` evaluated,
    in step order: a seed cut short adds nothing beyond its last step."""
    by_step: dict[int, list[float]] = {}
    for results in method.runs:
        for step, loss in results.get("eval_loss_curve", []):
            by_step.setdefault(step, []).append(loss)
    return sorted(by_step.items())


def mean_curve(method: MethodRuns) -> list[tuple[int, float]]:
    """(step, mean held-out loss over the seeds that evaluated that step), in step order."""
    return [(step, statistics.fmean(losses)) for step, losses in held_out_by_step(method)]


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose loss is at most `target` (0: the init alone); None if never."""
    return next((step for step, loss in curve if loss <= target), None)


def verdict_speed(runs: TaskRuns) -> str:
    """(b) steps LoRA-One needs to reach LoRA's final held-out loss, over LoRA's step count. Both sides
    are held-out losses, means over seeds: the target is LoRA's final one, LoRA-One's curve is measured
    every `eval_loss_every` steps, so the step found is an upper bound: the crossing lies after the
    evaluated step before it."""
    claim = "(b) steps LoRA-One needs to reach LoRA's final held-out loss"
    lora, one = runs.of(LORA), runs.of(LORA_ONE)
    one_curve = mean_curve(one) if one else []
    if lora is None or not one_curve:
        return f"{claim}: **not measured** (LoRA or LoRA-One runs, or their held-out loss curves, missing)."
    target, total = statistics.fmean(r["eval_loss"] for r in lora.runs), max(r["steps"] for r in lora.runs)
    measured = (f"LoRA's final held-out loss is {target:.4f} at step {total} (mean over {len(lora.runs)} seeds); "
                f"LoRA-One (its own chosen lr, mean over seeds) ")
    step = steps_to_reach(one_curve, target)
    if step is None:
        last_step, last_loss = one_curve[-1]
        return f"{claim}: **not reached** in {last_step} steps: {measured}ends at {last_loss:.4f}."
    ratio = f"**{step} / {total} = {step / total:.2f}×** LoRA's steps"
    loss = dict(one_curve)[step]
    if step == 0:
        return f"{claim}: {ratio}: {measured}is at {loss:.4f} after the init alone, before any step."
    every = max(b - a for (a, _), (b, _) in zip(one_curve, one_curve[1:]))
    return (f"{claim}: {ratio}: {measured}is at {loss:.4f} at step {step}. The held-out loss is measured every "
            f"{every} steps, so step {step} is an upper bound, within {every} steps.")


def verdict_ranking(runs: TaskRuns) -> str:
    """(c) methods by mean metric, and which 95 % intervals overlap the best one's."""
    ranked = sorted((m for m in runs.methods if m.runs), key=lambda m: -statistics.fmean(scores(m, runs.task)))
    if len(ranked) < 2:
        return "(c) ranking: **not measured** (fewer than two methods finished)."
    intervals = {m.method: confidence_interval(scores(m, runs.task)) for m in ranked}
    best_low = intervals[ranked[0].method][0]
    overlapping = [m.method for m in ranked[1:] if intervals[m.method][1] >= best_low]
    separated = [m.method for m in ranked[1:] if m.method not in overlapping]
    order = " > ".join(f"{m.method} ({100 * statistics.fmean(scores(m, runs.task)):.2f})" for m in ranked)
    overlap = (f"the best one's 95 % CI overlaps those of: {', '.join(overlapping) or 'none'}; "
               f"clearly below it: {', '.join(separated) or 'none'}")
    return f"(c) ranking: {order}; {overlap}."


def finished_runs(tasks: list[TaskRuns]) -> list[dict]:
    """Every finished run's results, tuning and seed runs."""
    return [r for t in tasks for r in t.tuning_runs + [r for m in t.methods for r in m.runs]]


def provenance_lines(tasks: list[TaskRuns]) -> list[str]:
    """The machine, code and packages of the finished runs, once (distinct values counted)."""
    records = [r["provenance"] for r in finished_runs(tasks) if r.get("provenance")]
    if not records:
        return ["- no run has finished yet"]

    def counted(values) -> str:
        counts = Counter(values)
        return ", ".join(f"{v} ({n} runs)" if len(counts) > 1 else str(v) for v, n in counts.items())

    commits = counted(f"{(r['git'] or {}).get('commit', '')[:12]}{' + uncommitted changes' if (r['git'] or {}).get('dirty') else ''}"
                      for r in records)
    packages = counted(", ".join(f"{k} {v}" for k, v in r["packages"].items() if v) for r in records)
    machine = counted(f"{r.get('cpu')}, {r.get('torch_threads')} torch threads, host {r.get('hostname')}" for r in records)
    return [f"- machine: {machine}", f"- code: commit {commits}", f"- python {counted(r['python'] for r in records)}; "
            f"{packages}", f"- runs from {min(r['start'] for r in records)} to {max(r['end'] for r in records)}"]


def status_lines(study: Study, tasks: list[TaskRuns]) -> list[str]:
    finished_tuning = sum(loss is not None for t in tasks for by in t.held_out_losses.values() for loss in by.values())
    planned_tuning = sum(len(by) for t in tasks for by in t.held_out_losses.values())
    finished_final = sum(len(m.runs) for t in tasks for m in t.methods)
    planned_final = len(study.tasks) * len(study.methods) * len(study.seeds)
    lines = [f"- tuning runs finished: {finished_tuning} of {planned_tuning}; seed runs finished: "
             f"{finished_final} of {planned_final}"]
    missing = [f"{t.task.name} {m.method} ({m.planned - len(m.runs)} seeds)" for t in tasks for m in t.methods
               if len(m.runs) < m.planned]
    lines.append("- missing: " + ("; ".join(missing) if missing else "nothing: every cell is filled from real runs"))
    trained = [r for r in finished_runs(tasks) if r.get("steps")]
    if trained:
        per_step = statistics.fmean(r["train_time_s"] / r["steps"] for r in trained)
        lines.append(f"- measured on this machine: {per_step:.1f} s per optimizer step (mean over the "
                     f"{len(trained)} finished trained runs, tuning and seed runs)")
    finished = finished_runs(tasks)
    left = planned_tuning - finished_tuning + planned_final - finished_final
    if finished and left:
        hours = left * statistics.fmean(wall_seconds(r) for r in finished) / 3600
        lines.append(f"- the {left} unfinished cells need about {hours:.1f} h more at this machine's pace in one "
                     f"worker (the mean wall time of a finished run × cells left; N workers divide it by up to N); "
                     f"resume with `python scripts/reproduce.py cpu --workers 2`")
    return lines


def task_section(runs: TaskRuns, figures: dict[str, str]) -> str:
    parts = [f"## {runs.task.name}\n", f"Scored on {runs.task.evaluated_on}.\n", task_table(runs),
             "\nLearning-rate selection (held-out loss at the tuning seed, the chosen rate in bold):\n",
             tuning_table(runs), "\nVerdicts:\n",
             "\n".join(f"- {line}" for line in (verdict_init_alone(runs), verdict_speed(runs), verdict_ranking(runs))),
             "\n"]
    parts += [f"\n![{runs.task.name} {kind}]({path})\n" for kind, path in figures.items()]
    return "\n".join(parts)


def reproduction_markdown(study: Study, tasks: list[TaskRuns], figures: dict[str, dict[str, str]], command: str,
                          now: datetime.datetime) -> str:
    sizing = "\n".join(f"- {key}: {value}" for key, value in study.sizing.items())
    sections = "\n".join(task_section(t, figures.get(t.task.name, {})) for t in tasks)
    return f"""# Reproduction at CPU scale

<!-- Generated by `{command}` ({now.isoformat(timespec='seconds')}): never edit by hand; rerun
`python scripts/reproduce.py report` (or `cpu`, which resumes) to regenerate. -->

Generated {now.strftime('%Y-%m-%d %H:%M UTC')} on {platform.node()} by `{command}`. The study: every
method of the LoRA-One paper's comparison on SmolLM2-135M, four tasks, a learning-rate grid per
method chosen on held-out training rows, then seeds at the chosen rate. These numbers are a small,
CPU-sized study; they are not the paper's setting (7B models, thousands of steps), whose published
numbers stand beside them only for orientation.

## Provenance

{chr(10).join(provenance_lines(tasks))}

## Status

{chr(10).join(status_lines(study, tasks))}

## Sizing

{sizing}

{sections}
## Published numbers (paper scale, as quoted in the reproduction issue)

{published_table()}"""


def write_reproduction(study: Study, root: Path, markdown_path: Path, figure_dir: Path, command: str) -> list[Path]:
    """REPRODUCTION.md and its figures (one loss and one bar chart per task with finished runs)."""
    from lora_one.reproduce.figures import plot_task

    tasks = collect(study, root)
    figure_dir.mkdir(parents=True, exist_ok=True)
    figures, written = {}, []
    for runs in tasks:
        paths = plot_task(runs, figure_dir)
        written += paths.values()
        figures[runs.task.name] = {kind: str(path.relative_to(markdown_path.parent)) for kind, path in paths.items()}
    now = datetime.datetime.now(datetime.timezone.utc)
    markdown_path.write_text(reproduction_markdown(study, tasks, figures, command, now))
    return [markdown_path, *written]
