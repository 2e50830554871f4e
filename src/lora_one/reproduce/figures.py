"""The study's figures, per task: the learning-rate grid (mean held-out loss per rate), the held-out
loss per evaluated step of each method (each seed a faint line, the mean over seeds bold) and the
benchmark metric (each seed a dot, the mean ± std as a bar clipped to the metric's range, the
majority-class baseline as a line). Small PNGs (100 dpi) without a version stamp, so the same
records draw the same bytes."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lora_one.reproduce import stats  # noqa: E402
from lora_one.reproduce.records import curve, mean_curve, metric  # noqa: E402

DPI = 100


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def save_with_legend(fig, ax, path: Path) -> None:
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)


def plot_losses(runs, path: Path) -> bool:
    """Held-out loss per evaluated optimizer step (`eval_loss_curve`): per method each seed's curve faint
    and the mean over seeds bold; a method measured at step 0 only (the spectral init) as its seeds' dots."""
    methods = [m for m in runs.methods if m.runs]
    if not methods:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=DPI)
    for index, method in enumerate(methods):
        color = f"C{index}"
        for record in method.runs.values():
            points = curve(record)
            ax.plot([s for s, _ in points], [v for _, v in points], color=color, alpha=0.2, lw=0.8,
                    marker="o" if len(points) == 1 else None, ms=3)
        mean = mean_curve(list(method.runs.values()))
        ax.plot([s for s, _ in mean], [v for _, v in mean], color=color, lw=2, marker="." if len(mean) > 1 else "o",
                label=f"{method.method} (n={len(method.runs)})")
    ax.set_yscale("log")
    ax.set(title=f"{runs.task.name}: held-out loss per evaluated step (faint: seeds, bold: mean)",
           xlabel="optimizer step (0: after the init)", ylabel="held-out loss (log scale)")
    save_with_legend(fig, ax, path)
    return True


def plot_metric(runs, path: Path, label: str, bounds: tuple[float, float], baseline) -> bool:
    """Per method its seeds' metric as dots over a bar of the mean with a ± std bar clipped to `bounds`;
    the majority-class baseline (label, value, rows) as a dashed line."""
    methods = [m for m in runs.methods if m.runs]
    if not methods:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=DPI)
    for x, method in enumerate(methods):
        values = list(method.values(metric(runs.task.benchmark)).values())
        mean, std = stats.mean_std(values)
        low, high = stats.clip(mean - std, mean + std, bounds)
        ax.bar(x, mean, color="tab:blue", alpha=0.5)
        ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], color="black", capsize=4)
        ax.plot([x] * len(values), values, "o", color="black", ms=3, alpha=0.6)
    if baseline is not None:
        ax.axhline(baseline[1], color="tab:red", ls="--", lw=1, label=f"majority class (`{baseline[0]}`)")
        ax.legend(fontsize=7)
    ax.set_xticks(range(len(methods)), [f"{m.method}\n(n={len(m.runs)})" for m in methods], fontsize=7)
    ax.set_ylim(min(bounds[0], ax.get_ylim()[0]) if bounds[0] < 0 else 0, bounds[1])
    ax.set(title=f"{runs.task.name}: {label}, mean ± std (clipped), dots: seeds", ylabel=label)
    ax.title.set_fontsize(9)
    ax.grid(axis="y", alpha=0.3)
    save(fig, path)
    return True


def plot_grid(runs, path: Path) -> bool:
    """Mean held-out loss over the tuning seeds against the learning rate (log scale), per method."""
    measured = {m.method: sorted((rate, loss) for rate, loss in m.grid.items() if loss is not None)
                for m in runs.methods if m.trains}
    if not any(measured.values()):
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=DPI)
    for method, points in measured.items():
        if points:
            ax.plot([r for r, _ in points], [loss for _, loss in points], "o-", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(title=f"{runs.task.name}: learning-rate grid, mean held-out loss over the tuning seeds",
           xlabel="learning rate", ylabel="held-out loss (log scale)")
    save_with_legend(fig, ax, path)
    return True


def plot_task(runs, out_dir: Path, label: str, bounds: tuple[float, float], baseline) -> dict[str, Path]:
    """{kind: path} of the figures written for a task (none before its first finished run)."""
    plots = {"grid": lambda p: plot_grid(runs, p), "loss": lambda p: plot_losses(runs, p),
             "metric": lambda p: plot_metric(runs, p, label, bounds, baseline)}
    written = {}
    for kind, plot in plots.items():
        path = out_dir / f"{runs.task.name}_{kind}.png"
        if plot(path):
            written[kind] = path
        else:
            path.unlink(missing_ok=True)
    return written
