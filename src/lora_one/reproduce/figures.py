"""The study's figures, per task: the learning-rate grid (held-out loss per rate), the loss per step
of each method (mean ± std over seeds) and a bar chart of the benchmark metric (mean ± std). Small
PNGs (100 dpi) for the repository."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lora_one.reproduce.report import TaskRuns, mean_std, metric_label, scores  # noqa: E402

DPI = 100


def save_with_legend(fig, ax, path: Path) -> None:
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def curve_stats(curves: list[list[float]]) -> tuple[list[float], list[float]]:
    """Per step, mean and std over seeds (cut to the shortest curve)."""
    steps = min(len(c) for c in curves)
    stats = [mean_std([c[i] for c in curves]) for i in range(steps)]
    return [m for m, _ in stats], [s for _, s in stats]


def plot_losses(runs: TaskRuns, path: Path) -> bool:
    """Training loss per step (line, ± std band) and the held-out loss after the init (step 0) and at
    the end (markers with ± std bars): run_exp measures the held-out loss only at those two points."""
    trained = [m for m in runs.methods if m.runs]
    if not trained:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=DPI)
    for method in trained:
        color = None
        curves = [r["train_loss_curve"] for r in method.runs if r.get("train_loss_curve")]
        if curves:
            mean, std = curve_stats(curves)
            x = range(1, len(mean) + 1)
            (line,) = ax.plot(x, mean, label=f"{method.method} (n={len(curves)})")
            color = line.get_color()
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], color=color,
                            alpha=0.15)
        held_out = [(0, [r["eval_loss_after_init"] for r in method.runs])]
        if curves:
            held_out.append((len(mean), [r["eval_loss"] for r in method.runs]))
        for step, values in held_out:
            m, s = mean_std(values)
            points = ax.errorbar([step], [m], yerr=[s], fmt="o", color=color, capsize=3,
                                 label=None if curves else f"{method.method} (held-out, n={len(values)})")
            color = points.lines[0].get_color()
    ax.set(title=f"{runs.task.name}: training loss per step (lines) and held-out loss (dots), mean ± std",
           xlabel="optimizer step (0: after the init)", ylabel="loss")
    save_with_legend(fig, ax, path)
    return True


def plot_bars(runs: TaskRuns, path: Path) -> bool:
    finished = [m for m in runs.methods if m.runs]
    if not finished:
        return False
    stats = [mean_std([100 * v for v in scores(m, runs.task)]) for m in finished]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=DPI)
    ax.bar(range(len(finished)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(finished)), [f"{m.method}\n(n={len(m.runs)})" for m in finished], fontsize=7)
    ax.set(title=f"{runs.task.name}: {metric_label(runs)}, mean ± std over seeds", ylabel=metric_label(runs))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def plot_grid(runs: TaskRuns, path: Path) -> bool:
    """Held-out loss of each tuning run against its learning rate (log scale), per method."""
    measured = {method: sorted((rate, loss) for rate, loss in by_rate.items() if loss is not None)
                for method, by_rate in runs.held_out_losses.items()}
    if not any(measured.values()):
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=DPI)
    for method, points in measured.items():
        if points:
            ax.plot([r for r, _ in points], [loss for _, loss in points], "o-", label=method)
    ax.set_xscale("log")
    ax.set(title=f"{runs.task.name}: learning-rate grid, held-out loss at the tuning seed", xlabel="learning rate",
           ylabel="held-out loss")
    save_with_legend(fig, ax, path)
    return True


def plot_task(runs: TaskRuns, out_dir: Path) -> dict[str, Path]:
    """{kind: path} of the figures written for a task (none before its first finished run)."""
    written = {}
    for kind, plot in (("grid", plot_grid), ("loss", plot_losses), ("metric", plot_bars)):
        path = out_dir / f"{runs.task.name}_{kind}.png"
        if plot(runs, path):
            written[kind] = path
        else:
            path.unlink(missing_ok=True)
    return written
