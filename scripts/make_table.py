"""Sweep → paper table. Reads every results.json under a directory and pools into one row only the
runs whose resolved configs are equal but for the seed (and bookkeeping: cache_dir, resume,
checkpoint, wandb). Rows = method (init × optimizer) plus one column per setting that differs between
rows (a `model.learning_rate=1e-3,1e-1` sweep gets a learning-rate column); columns = tasks (each
`eval` benchmark's headline metric, or the held-out loss of the training dataset when a run has no
benchmark); cells = mean ± std over seeds (sample std), or a single seed's value marked "(1 seed)".

The setting columns are the Hydra overrides (`.hydra/overrides.yaml` of each run) that differ between
rows, shown with their resolved values; without recorded overrides, the differing resolved keys.
Runs launched with the same overrides whose resolved configs differ (the code's defaults or the
environment changed between launches) are refused with one line naming both runs and the key.

Writes table.md (with the runs' provenance: commit, packages, device, once if all runs agree, else
per row), table.tex and, per training dataset, loss_<dataset>.png: the mean training loss per step of
each row, shaded ± 1 std over seeds.

With `--layout reproduction` (a paper-scale sweep, `python scripts/reproduce.py paper --table gsm8k`),
writes instead reproduction.md: per task (a benchmark; GLUE: its task; runs without one: the training
dataset) REPRODUCTION.md's table (reproduce/tables.py), a row per group of seeds, paired to the LoRA
row at the same settings; then the provenance and the published numbers' sources.

    python scripts/make_table.py multirun/2026-01-01/12-00-00 [--out DIR] [--layout reproduction]
"""
import argparse
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from lora_one.reproduce import tables
from lora_one.reproduce.published import published_cell, published_table
from lora_one.reproduce.records import metric_name
from lora_one.reproduce.stats import mean_std

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The headline metric of a benchmark's metrics, first found (nested keys joined by '/').
HEADLINE_METRICS = ("accuracy", "mean_accuracy", "pass@1", "overall/accuracy")
HARNESS = "lm_eval"  # eval=lm_eval: every metric of every harness task is a column of its own
INIT_NAMES = {"default": "LoRA", "gaussian": "LoRA (Gaussian)", "pissa": "PiSSA"}
EVAL_LOSS = "eval loss"
# Top-level config keys that say where and how a run was kept, not what it computed.
BOOKKEEPING = {"cache_dir", "resume", "checkpoint", "wandb", "hydra"}
# Keys the Method column already shows.
METHOD_KEYS = {"init", "init.name", "init.direction", "optim", "optim.name"}
LEARNING_RATE = "model.learning_rate"  # the reproduction layout's lr column
# make_table's method names that the paper (and published.py) names otherwise; AdamW, the paper's
# default optimizer, is left out of every other name ("LoRA-One + adamw" is the paper's "LoRA-One").
PAPER_NAMES = {"LoRA + loraplus": "LoRA+"}


@dataclass
class Run:
    path: Path  # the run directory, relative to the table's root
    results: dict
    overrides: dict[str, str] | None  # Hydra's overrides of the run (key → value as written), seed and bookkeeping
    # left out; None: not recorded


@dataclass
class Row:
    method: str
    settings: tuple[str, ...]  # one value per setting column
    runs: list[Run]
    cells: dict = field(default_factory=lambda: defaultdict(list))  # (task, metric) → values over seeds

    @property
    def label(self) -> str:
        return ", ".join((self.method, *self.settings))


def is_compared(key: str) -> bool:
    """Whether runs must agree on this dotted config key to be pooled: not the seed (`seed`, and the
    evaluators' `eval.<task>.seed`, which is `${seed}`), not bookkeeping."""
    parts = key.split(".")
    return parts[-1] != "seed" and parts[0] not in BOOKKEEPING


def config_leaves(config: dict, prefix: str = "") -> dict:
    """{dotted key: value} of every leaf of a nested config (lists are leaves)."""
    leaves = {}
    for key, value in config.items():
        if isinstance(value, dict):
            leaves.update(config_leaves(value, f"{prefix}{key}."))
        else:
            leaves[f"{prefix}{key}"] = value
    return leaves


def compared_config(run: Run) -> dict:
    return {k: v for k, v in config_leaves(run.results["config"]).items() if is_compared(k)}


def read_overrides(run_dir: Path) -> dict[str, str | None] | None:
    """{key: value as written} of the Hydra overrides of this run (`++init.direction=X` → init.direction:
    X; a deletion `~key` → None), or None when the run has no .hydra/overrides.yaml (run_exp.run
    called directly)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return None
    overrides = OverridesParser.create().parse_overrides(yaml.safe_load(path.read_text()) or [])
    return {o.key_or_group: None if o.is_delete() else o.get_value_element_as_str()
            for o in overrides if is_compared(o.key_or_group)}


def load_runs(root: Path) -> list[Run]:
    paths = sorted(root.rglob("results.json"))
    if not paths:
        raise SystemExit(f"error: no results.json under {root}")
    return [Run(path.parent.relative_to(root), json.loads(path.read_text()), read_overrides(path.parent))
            for path in paths]


def method_of(results: dict) -> str:
    init, optim = results["config"]["init"], results["config"]["optim"]["name"]
    if results["config"].get("peft", {}).get("name") == "none":  # no adapters, so no adapter init
        return f"Full FT + {optim}"
    name = init["direction"] if init["name"] == "gradient" else INIT_NAMES.get(init["name"], init["name"])
    return f"{name} + {optim}"


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs whose resolved configs agree on every compared key: the seeds of one setting."""
    groups = defaultdict(list)
    for run in runs:
        groups[json.dumps(compared_config(run), sort_keys=True, default=str)].append(run)
    return list(groups.values())


def check_same_overrides_same_config(groups: list[list[Run]]) -> None:
    """Runs launched with the same overrides (the seed aside) must resolve to the same config."""
    first_with = {}
    for group in groups:
        for run in group:
            if run.overrides is None:
                continue
            other, other_group = first_with.setdefault(tuple(sorted(run.overrides.items())), (run, group))
            if other_group is not group:
                mine, theirs = compared_config(run), compared_config(other)
                key = next(k for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k))
                raise SystemExit(f"error: refusing to average {other.path} and {run.path}: same overrides, but "
                                 f"their resolved configs differ in {key} ({theirs.get(key)!r} vs {mine.get(key)!r})")


def shown_value(config: dict, key: str) -> str:
    """A setting's resolved value as a cell: a config group (`model=…`) by its `name`."""
    value = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return "–"
        value = value[part]
    if isinstance(value, dict):
        return str(value.get("name", json.dumps(value, sort_keys=True)))
    return json.dumps(value) if isinstance(value, list) else str(value)


def setting_columns(groups: list[list[Run]]) -> list[str]:
    """Keys whose resolved values differ between groups (Method aside): among the recorded overrides
    when every run has them and they tell the groups apart, else among all compared keys."""
    def differing(keys) -> list[str]:
        return [k for k in sorted(keys) if k not in METHOD_KEYS
                and len({shown_value(g[0].results["config"], k) for g in groups}) > 1]

    def distinct(columns) -> bool:
        labels = {(method_of(g[0].results), *(shown_value(g[0].results["config"], k) for k in columns)) for g in groups}
        return len(labels) == len(groups)

    runs = [run for group in groups for run in group]
    if all(run.overrides is not None for run in runs):
        columns = differing({key for run in runs for key in run.overrides})
        if distinct(columns):
            return columns
    return differing({key for group in groups for key in compared_config(group[0])})


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def headline(metrics: dict) -> tuple[str, float] | None:
    """(metric, value) of a benchmark's first headline metric found, or None."""
    flat = flatten(metrics)
    metric = next((m for m in HEADLINE_METRICS if m in flat), None)
    return None if metric is None else (metric, flat[metric])


def harness_scores(metrics: dict) -> dict[tuple[str, str], float]:
    """{(harness task, metric): value} of eval=lm_eval's results, each metric named as the harness names it
    and as such: ("gsm8k", "exact_match strict-match (lm-eval, 5-shot)"), ("arc_easy", "acc_norm (lm-eval,
    0-shot)"); standard errors left out."""
    scores = {}
    for task, values in metrics.get("results", {}).items():
        shots = metrics.get("n-shot", {}).get(task, "?")
        for key, value in values.items():
            name, _, filter_name = key.partition(",")
            if name.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            shown = name if filter_name in ("", "none") else f"{name} {filter_name}"
            scores[(task, f"{shown} (lm-eval, {shots}-shot)")] = value
    return scores


def scores_of(results: dict) -> dict[tuple[str, str], float]:
    """{(task, metric): value}: each benchmark's headline metric (the harness: all its metrics), or
    (dataset, eval loss)."""
    scores = {}
    for task, metrics in (results.get("eval") or {}).items():
        if task == HARNESS:
            scores.update(harness_scores(metrics))
            continue
        found = headline(metrics)
        if found is not None:
            scores[(task, found[0])] = found[1]
    if not scores:
        scores[(results["config"]["dataset"]["name"], EVAL_LOSS)] = results["eval_loss"]
    return scores


def aggregate(runs: list[Run]) -> tuple[list[Row], list[str], list[tuple[str, str]]]:
    """(rows sorted by method and settings, setting columns, metric columns)."""
    groups = group_runs(runs)
    check_same_overrides_same_config(groups)
    settings = setting_columns(groups)
    rows = []
    for group in groups:
        config = group[0].results["config"]
        row = Row(method_of(group[0].results), tuple(shown_value(config, k) for k in settings), group)
        for run in group:
            for column, value in scores_of(run.results).items():
                row.cells[column].append(value)
        rows.append(row)
    columns = sorted({column for row in rows for column in row.cells})
    return sorted(rows, key=lambda r: (r.method, *map(setting_order, r.settings))), settings, columns


def setting_order(value: str) -> tuple:
    """Numbers in numeric order (1e-05 before 0.001), before any text."""
    try:
        return 0, float(value), ""
    except ValueError:
        return 1, 0.0, value


def cell_text(values: list[float], metric: str) -> str:
    """Losses as they are; accuracies and pass rates in percent."""
    return tables.pm(values, 4) if metric == EVAL_LOSS else tables.pm([100 * v for v in values], 2)


def best_rows(rows: list[Row], column) -> set[int]:
    """Indices of the row(s) with the best mean in a column: the lowest loss, the highest score."""
    means = {i: mean_std(row.cells[column])[0] for i, row in enumerate(rows) if row.cells.get(column)}
    if not means:
        return set()
    best = (min if column[1] == EVAL_LOSS else max)(means.values())
    return {i for i, v in means.items() if v == best}


def header_of(column) -> str:
    task, metric = column
    return f"{task} {metric} ↓" if metric == EVAL_LOSS else f"{task} {metric} (%) ↑"


def table_cells(rows: list[Row], columns, escape=str, bold="**{}**", missing="–") -> list[list[str]]:
    """Per row: method, settings, seed count, then each metric cell (the best of a column in bold)."""
    best = {c: best_rows(rows, c) for c in columns}
    lines = []
    for i, row in enumerate(rows):
        cells = []
        for column in columns:
            values = row.cells.get(column)
            text = escape(cell_text(values, column[1])) if values else missing
            cells.append(bold.format(text) if i in best[column] and len(rows) > 1 else text)
        seeds = max(len(values) for values in row.cells.values())
        lines.append([escape(row.method), *map(escape, row.settings), str(seeds), *cells])
    return lines


def markdown_table(rows: list[Row], settings: list[str], columns) -> str:
    lines = ["| " + " | ".join(["Method", *settings, "seeds", *map(header_of, columns)]) + " |",
             "|---|" + "---|" * len(settings) + "---:|" + "---:|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_cells(rows, columns)]
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text.replace("±", r"$\pm$").replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$")


def latex_table(rows: list[Row], settings: list[str], columns) -> str:
    header = ["Method", *settings, "Seeds", *map(header_of, columns)]
    lines = [r"\begin{tabular}{l" + "l" * len(settings) + "r" + "c" * len(columns) + "}", r"\toprule",
             " & ".join(map(latex_escape, header)) + r" \\", r"\midrule"]
    lines += [" & ".join(cells) + r" \\" for cells in table_cells(rows, columns, latex_escape, r"\textbf{{{}}}", "--")]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def environment_of(run: Run) -> str:
    """One line on what produced a run (its provenance without the times), or that it was not recorded."""
    record = run.results.get("provenance")
    if not record:
        return "provenance not recorded"
    git = record.get("git") or {}
    commit = "not a git checkout" if not git.get("commit") else \
        f"commit {git['commit'][:12]}" + (" + uncommitted changes" if git.get("dirty") else "")
    packages = ", ".join(f"{name} {version}" for name, version in (record.get("packages") or {}).items() if version)
    device = ", ".join(record.get("gpus") or []) or record.get("cpu") or "unknown device"
    return (f"{commit}; python {record.get('python')}, {packages}; {device}, {record.get('torch_threads')} torch "
            f"threads, host {record.get('hostname')}")


def time_span(runs: list[Run]) -> str:
    records = [run.results["provenance"] for run in runs if run.results.get("provenance")]
    return f"; runs from {min(r['start'] for r in records)} to {max(r['end'] for r in records)}" if records else ""


def provenance_section(rows: list[Row]) -> str:
    """The provenance once when every run shares it, else per row (each distinct one with its run count)."""
    runs = [run for row in rows for run in row.runs]
    environments = {environment_of(run) for run in runs}
    if len(environments) == 1:
        return f"Provenance (all {len(runs)} runs): {environments.pop()}{time_span(runs)}.\n"
    lines = ["Provenance differs between runs:"]
    for row in rows:
        counts = defaultdict(int)
        for run in row.runs:
            counts[environment_of(run)] += 1
        described = "; and ".join(f"{env} ({n} run{'s' * (n > 1)})" for env, n in sorted(counts.items()))
        lines.append(f"- {row.label}: {described}{time_span(row.runs)}")
    return "\n".join(lines) + "\n"


def task_scores(results: dict) -> dict[str, tuple[str | None, str | None, float | None]]:
    """{task: (benchmark, metric, value)} of each benchmark a run scored, as REPRODUCTION.md names
    them: a benchmark configured with a `task` (GLUE: the run's dataset) is that task, scored by its
    `main_metric` (records.metric_name: CoLA's Matthews correlation, MRPC's F1); any other is its own
    task, scored by its headline metric; each metric of a harness task (eval=lm_eval) is a task of its
    own, "gsm8k exact_match strict-match (lm-eval, 5-shot)". A run that scored none counts under its training
    dataset with neither (its held-out loss is the whole result)."""
    scores = {}
    for benchmark, metrics in (results.get("eval") or {}).items():
        if benchmark == HARNESS:
            scores.update({f"{task} {metric}": (benchmark, metric, value)
                           for (task, metric), value in harness_scores(metrics).items()})
            continue
        found = ((metric_name(results, benchmark), metrics[metric_name(results, benchmark)])
                 if "main_metric" in metrics else headline(metrics))
        if found is not None:
            scores[results["config"]["eval"][benchmark].get("task", benchmark)] = (benchmark, *found)
    return scores or {results["config"]["dataset"]["name"]: (None, None, None)}


def rows_by_task(rows: list[Row]) -> dict[str, list[tuple[Row, str | None, str | None, dict[int, float]]]]:
    """task → [(row, benchmark, metric, seed → value in percent)] in row order, tasks in name order."""
    by_task = defaultdict(dict)  # task → row index → its entry
    for index, row in enumerate(rows):
        for run in row.runs:
            for task, (benchmark, metric, value) in task_scores(run.results).items():
                seeds = by_task[task].setdefault(index, (row, benchmark, metric, {}))[3]
                if value is not None:
                    seeds[run.results["config"]["seed"]] = 100 * value
    return {task: list(entries.values()) for task, entries in sorted(by_task.items())}


def paper_name(method: str) -> str:
    """make_table's method name as published.py names it."""
    return PAPER_NAMES.get(method, method.removesuffix(" + adamw"))


def reproduction_table(task: str, entries: list[tuple[Row, str | None, str | None, dict[int, float]]],
                       settings: list[str]) -> str:
    """tables.py's task table, a column for each setting but the rate that differs between its rows;
    a row's paired Δ is to the LoRA row at the same settings (rate, dataset ...)."""
    shown = [i for i, key in enumerate(settings)
             if key != LEARNING_RATE and len({row.settings[i] for row, *_ in entries}) > 1]
    summaries = [tables.RowSummary(row.method, shown_value(row.runs[0].results["config"], LEARNING_RATE),
                                   published_cell(task, paper_name(row.method)),
                                   {run.results["config"]["seed"]: run.results for run in row.runs}, scores, benchmark,
                                   tuple(row.settings[i] for i in shown)) for row, benchmark, _, scores in entries]
    lora = {row.settings: summary for (row, *_), summary in zip(entries, summaries)
            if paper_name(row.method) == tables.LORA}
    for (row, *_), summary in zip(entries, summaries):
        if paper_name(row.method) != tables.LORA:
            summary.reference = lora.get(row.settings)
    metric = next((m for _, _, m, _ in entries if m is not None), None)
    return tables.markdown(summaries, tables.metric_label(metric), "lr", tuple(settings[i] for i in shown))


def reproduction_markdown(rows: list[Row], settings: list[str], source: Path) -> str:
    """REPRODUCTION.md's per-task layout for a sweep: a table per task, the runs' provenance, then
    the published numbers with the sources the table's [n] refer to."""
    sections = [f"## {task}\n\n{reproduction_table(task, entries, settings)}"
                for task, entries in rows_by_task(rows).items()]
    return (f"# Sweep {source}\n\nPer task: one row per setting, mean ± sample std over its seeds.\n\n"
            + "\n".join(sections) + f"\n## Provenance\n\n{provenance_section(rows)}\n"
            f"## Published numbers (paper scale, as quoted in the reproduction issue)\n\n{published_table()}")


def plot_loss_curves(rows: list[Row], out_dir: Path) -> list[Path]:
    """One PNG per training dataset: per row, the mean training loss per step over seeds (curves cut
    to the shortest seed's), shaded ± 1 std."""
    curves = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for run in row.runs:
            if run.results.get("train_loss_curve"):
                curves[run.results["config"]["dataset"]["name"]][row.label].append(run.results["train_loss_curve"])
    written = []
    for dataset, by_row in sorted(curves.items()):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for label, seeds in sorted(by_row.items()):
            steps = min(len(curve) for curve in seeds)
            stats = [mean_std([curve[i] for curve in seeds]) for i in range(steps)]
            mean = [m for m, _ in stats]
            x = range(1, steps + 1)
            (line,) = ax.plot(x, mean, label=f"{label} (n={len(seeds)})")
            ax.fill_between(x, [m - s for m, s in stats], [m + s for m, s in stats], color=line.get_color(), alpha=0.2)
        ax.set(title=f"{dataset}: training loss (mean ± std over seeds)", xlabel="optimizer step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"loss_{dataset}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("multirun_dir", type=Path)
    parser.add_argument("--out", type=Path, help="where to write the table and plots (default: multirun_dir)")
    parser.add_argument("--layout", choices=("table", "reproduction"), default="table",
                        help="table: table.md, table.tex and loss plots; reproduction: reproduction.md, per task")
    args = parser.parse_args(argv)
    if not args.multirun_dir.is_dir():
        raise SystemExit(f"error: {args.multirun_dir} is not a directory")
    runs = load_runs(args.multirun_dir)
    rows, settings, columns = aggregate(runs)
    out_dir = args.out or args.multirun_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.layout == "reproduction":
        markdown = reproduction_markdown(rows, settings, args.multirun_dir)
        texts = {out_dir / "reproduction.md": markdown}
    else:
        markdown = markdown_table(rows, settings, columns) + "\n" + provenance_section(rows)
        texts = {out_dir / "table.md": markdown, out_dir / "table.tex": latex_table(rows, settings, columns)}
    for path, text in texts.items():
        path.write_text(text)
    plots = plot_loss_curves(rows, out_dir) if args.layout == "table" else []
    print(markdown)
    print(f"{len(runs)} runs → " + ", ".join(str(p) for p in [*texts, *plots]), file=sys.stderr)


if __name__ == "__main__":
    main()
