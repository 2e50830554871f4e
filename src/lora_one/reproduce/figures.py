"""The study's figures, per task: the learning-rate grid (held-out loss per rate), the held-out loss
per evaluated step of each method (mean ± std over seeds) and a bar chart of the benchmark metric
(mean ± std). Small PNGs (100 dpi) for the repository."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lora_one.reproduce.report import TaskRuns, held_out_by_step, mean_std, metric_label, scores  # noqa: E402

DPI = 100


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_with_legend(fig, ax, path: Path) -> None:
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)


def plot_losses(runs: TaskRuns, path: Path) -> bool:
    """Held-out loss per evaluated optimizer step (`eval_loss_curve`), per method: the mean over seeds
    as a line with a ± std band; a method measured at step 0 only (the spectral init, untrained) as a
    marker with a ± std bar."""
    curves = [(method, held_out_by_step(method)) for method in runs.methods]
    curves = [(method, points) for method, points in curves if points]
    if not curves:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=DPI)
    for method, points in curves:
        steps = [step for step, _ in points]
        stats = [mean_std(losses) for _, losses in points]
        mean, std = [m for m, _ in stats], [s for _, s in stats]
        label = f"{method.method} (n={len(points[0][1])})"  # every seed's curve starts at step 0
        if len(points) == 1:
            ax.errorbar(steps, mean, yerr=std, fmt="o", capsize=3, label=label)
            continue
        (line,) = ax.plot(steps, mean, marker=".", label=label)
        ax.fill_between(steps, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                        color=line.get_color(), alpha=0.15)
    ax.set(title=f"{runs.task.name}: held-out loss per evaluated step, mean ± std over seeds",
           xlabel="optimizer step (0: after the init)", ylabel="held-out loss")
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
    save(fig, path)
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
