"""PNG figures of the toy experiments, drawn from the theory.json dict alone (so they can be redrawn
from a saved file). Small on purpose (dpi 80): they are committed for the README."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 80


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_random_init(results: dict, path: Path) -> Path:
    """Risk (log scale) and alignment sine vs GD step, one line per init variance σ²."""
    fig, (ax_risk, ax_sine) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(results["random_init"])))
    for color, (key, run) in zip(colors, results["random_init"].items()):
        ax_risk.semilogy(run["risk"], color=color, label=f"σ² = {key}")
        ax_sine.plot(run["sine"], color=color, label=f"σ² = {key}")
    ax_sine.axhline(results["predictions"]["sine_floor"], color="gray", ls=":", label="sin∠(col Δ, G top-K)")
    ax_risk.set(xlabel="GD step", ylabel="risk ½‖AB − Δ‖²", title="random init (B₀ = 0): risk")
    ax_sine.set(xlabel="GD step", ylabel="sin θ(A top-K, G top-K)", title="alignment with G", ylim=(0, 1.05))
    ax_risk.legend(fontsize=8)
    ax_sine.legend(fontsize=8, loc="lower left")
    return save(fig, path)


def plot_spectral(results: dict, path: Path) -> Path:
    """log10 risk of the effective update vs step, GD and preconditioned GD, one line per init."""
    spectral = results["spectral"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    floor = np.log10(results["predictions"]["lora_ga_risk_floor"])
    for ax, optimizer, title in zip(axes, ("gd", "precgd"), ("GD", "preconditioned GD")):
        for method, runs in spectral.items():
            ax.plot(runs[optimizer]["log_risk"], label=method)
        ax.axhline(floor, color="gray", ls=":", label="LoRA-GA rank-r floor")
        ax.set(xlabel="step", title=f"{title} (η = {results['config']['spectral_lr']})")
    axes[0].set_ylabel("log10 risk of AB − O")
    axes[0].legend(fontsize=8)
    return save(fig, path)


def plot_phase_portrait(results: dict, path: Path) -> Path:
    """Left: GD trajectories of b·(xᵀa) in (a₁, a₂, b) with the curve of global minimisers a = β/b.
    Right: the same trajectories projected on the a-plane, with the line spanned by −G: small random
    starts leave the origin along it (alignment), the spectral start begins on it."""
    portrait = results["phase_portrait"]
    trajectories = {name: np.asarray(t) for name, t in portrait["trajectories"].items()}
    points = np.concatenate(list(trajectories.values()))
    a_max = np.abs(points[:, :2]).max() * 1.15
    beta, direction = np.asarray(portrait["target"]), np.asarray(portrait["negative_gradient"])
    fig = plt.figure(figsize=(10, 4.6))
    ax3d = fig.add_subplot(1, 2, 1, projection="3d")
    ax2d = fig.add_subplot(1, 2, 2)
    b_min = np.abs(beta).max() / a_max  # the minimiser curve, within the trajectories' a-range
    b_max = np.abs(points[:, 2]).max() * 1.15
    for sign in (1, -1):
        b = sign * np.linspace(b_min, b_max, 100)
        ax3d.plot(beta[0] / b, beta[1] / b, b, color="gray", ls="--", lw=1,
                  label="minimisers a·b = β" if sign == 1 else None)
    line = np.linspace(-a_max, a_max, 2)[:, None] * direction / np.linalg.norm(direction)
    ax2d.plot(line[:, 0], line[:, 1], color="gray", ls="--", lw=1, label="span(−G)")
    for index, (name, t) in enumerate(trajectories.items()):
        spectral = name == "spectral"
        style = dict(color="crimson" if spectral else f"C{index}", lw=2.5 if spectral else 1,
                     label="spectral start" if spectral else ("small random starts" if index == 1 else None))
        ax3d.plot(t[:, 0], t[:, 1], t[:, 2], **style)
        ax2d.plot(t[:, 0], t[:, 1], **style)
        for ax, coords in ((ax3d, t[[0, -1]].T), (ax2d, t[[0, -1], :2].T)):
            ax.scatter(*[c[:1] for c in coords], color=style["color"], s=25, marker="o")
            ax.scatter(*[c[1:] for c in coords], color=style["color"], s=70, marker="*")
    ax3d.set(xlabel="a₁", ylabel="a₂", zlabel="b", title="GD on b·(xᵀa): ● start, ★ end")
    ax3d.view_init(elev=20, azim=-60)
    ax3d.legend(fontsize=8, loc="upper left")
    ax2d.set(xlabel="a₁", ylabel="a₂", title="the a-plane", xlim=(-a_max, a_max), ylim=(-a_max, a_max), aspect="equal")
    ax2d.legend(fontsize=8)
    return save(fig, path)


def plot_all(results: dict, out_dir: Path) -> list[Path]:
    return [plot_random_init(results, out_dir / "theory_random_init.png"),
            plot_spectral(results, out_dir / "theory_spectral.png"),
            plot_phase_portrait(results, out_dir / "theory_phase_portrait.png")]
