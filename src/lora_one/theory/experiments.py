"""The paper's three toy experiments, one seeded function: `run_theory(seed)` → the theory.json dict.

1. random_init: GD (lr 1/64, 1500 steps) from A₀ = σZ, B₀ = 0 for σ² ∈ {1, 0.1, 1e-2, 1e-3, 1e-4}:
   per step the risk ½‖AB − Δ‖²_F and the sine between A's top-K left singular subspace and G's.
2. spectral: LoRA-One, LoRA-GA and a small random init under GD and preconditioned GD (η = 0.5,
   λ = 1e-3, 100 steps): per step log10 of the effective update's risk, and the same sine.
3. phase_portrait: GD on the scalar model b·(xᵀa) (the same linear model with d = 2, k = 1, r = 1)
   from small random starts and from the spectral start: trajectories (a₁, a₂, b).

All parts use one draw of the task (Δ with singular values 4:3:2:1 scaled to σ₁ = 1, N = 1600 samples)
and GD on the empirical loss over those samples (see linear_model). Lists are indexed by step, index 0
being the init itself.
"""
from dataclasses import asdict, dataclass
from functools import partial

import numpy as np

from lora_one.theory.inits import Start, lora_ga_init, lora_one_init, random_init
from lora_one.theory.linear_model import (
    LinearTask,
    alignment_sine,
    full_gradient,
    gd_step,
    iterate,
    low_rank_target,
    make_task,
    precgd_step,
    risk,
    top_left_singular_vectors,
)

METHODS = ("LoRA-One", "LoRA-GA", "random")


@dataclass(frozen=True)
class TheoryConfig:
    d: int = 100
    k: int = 100
    n_samples: int = 1600
    target_singular_values: tuple = (1.0, 0.75, 0.5, 0.25)  # 4:3:2:1 scaled to σ₁ = 1
    lora_rank: int = 8
    variances: tuple = (1.0, 0.1, 1e-2, 1e-3, 1e-4)
    random_lr: float = 1 / 64
    random_steps: int = 1500
    spectral_lr: float = 0.5  # η of both GD and preconditioned GD in part 2
    damping: float = 1e-3  # λ of preconditioned GD
    spectral_steps: int = 100
    spectral_random_variance: float = 1e-4  # the "random" method of part 2
    phase_target: tuple = (2.0, 1.0)  # β of the scalar model y = xᵀβ
    phase_samples: int = 1600
    phase_lr: float = 0.1
    phase_steps: int = 300
    phase_random_starts: int = 5
    phase_variance: float = 1e-2
    phase_fit_tolerance: float = 1e-6  # "fitted" = risk below this


def variance_key(variance: float) -> str:
    """The theory.json key of a variance: '1', '0.1', '0.01', '0.001', '0.0001'."""
    return f"{variance:g}"


def curves(task: LinearTask, start: Start, step, steps: int, reference: np.ndarray) -> dict:
    """Per-step risk of the effective update AB − O and alignment sine of A, from the init on."""
    risks, sines = [], []
    for A, B in iterate(partial(step, task, start.offset), start.A, start.B, steps):
        risks.append(risk(A @ B - start.offset, task.delta))
        sines.append(alignment_sine(reference, A))
    return {"risk": risks, "sine": sines}


def log_risk(values: list) -> list:
    """log10 of each risk; a risk of exactly 0 (never seen in practice) is floored at the smallest
    normal float64 so the JSON stays finite."""
    return np.log10(np.maximum(values, np.finfo(np.float64).tiny)).tolist()


def random_init_experiment(task: LinearTask, config: TheoryConfig, gaussian: np.ndarray, reference: np.ndarray) -> dict:
    step = partial(gd_step, lr=config.random_lr)
    return {variance_key(v): curves(task, random_init(gaussian, config.k, v), step, config.random_steps, reference)
            for v in config.variances}


def spectral_starts(task: LinearTask, config: TheoryConfig, gaussian: np.ndarray) -> dict[str, Start]:
    G = full_gradient(task)
    return {"LoRA-One": lora_one_init(G, config.lora_rank), "LoRA-GA": lora_ga_init(G, config.lora_rank),
            "random": random_init(gaussian, config.k, config.spectral_random_variance)}


def spectral_experiment(task: LinearTask, config: TheoryConfig, starts: dict[str, Start],
                        reference: np.ndarray) -> dict:
    optimizers = {"gd": partial(gd_step, lr=config.spectral_lr),
                  "precgd": partial(precgd_step, lr=config.spectral_lr, damping=config.damping)}
    results = {}
    for method, start in starts.items():
        results[method] = {}
        for name, step in optimizers.items():
            run = curves(task, start, step, config.spectral_steps, reference)
            results[method][name] = {"log_risk": log_risk(run["risk"]), "sine": run["sine"]}
    return results


def phase_portrait(rng: np.random.Generator, config: TheoryConfig) -> dict:
    """GD on b·(xᵀa): the linear model with d = 2, k = 1, r = 1 (a = A, b = B). Its minimisers are the
    curve a·b = β; the spectral start a₀b₀ = −G = Σ̂β begins next to it."""
    task = make_task(rng, np.asarray(config.phase_target, dtype=np.float64)[:, None], config.phase_samples)
    gradient = full_gradient(task)
    gaussian = rng.standard_normal((2, config.phase_random_starts))
    starts = {"spectral": lora_one_init(gradient, 1)}
    starts.update({f"random {i}": random_init(gaussian[:, [i]], 1, config.phase_variance)
                   for i in range(config.phase_random_starts)})
    step = partial(gd_step, task, np.zeros((2, 1)), lr=config.phase_lr)
    trajectories, steps_to_fit = {}, {}
    for name, start in starts.items():
        path = list(iterate(step, start.A, start.B, config.phase_steps))
        trajectories[name] = [[float(A[0, 0]), float(A[1, 0]), float(B[0, 0])] for A, B in path]
        steps_to_fit[name] = next((t for t, (A, B) in enumerate(path)
                                   if risk(A @ B, task.delta) < config.phase_fit_tolerance), None)
    return {"target": list(config.phase_target), "negative_gradient": (-gradient).ravel().tolist(),
            "trajectories": trajectories, "steps_to_fit": steps_to_fit}


def predictions(task: LinearTask, config: TheoryConfig, starts: dict[str, Start], reference: np.ndarray) -> dict:
    """Closed-form reference values the curves are judged against.

    sine_floor: sin θ between col(Δ) and G's top-K subspace (G = −Σ̂Δ, so it is > 0 only because
        Σ̂ ≠ I). An adapter that has fit Δ has col(Δ) as its top-K subspace, so this is where a
        converged run's sine ends.
    lora_one_init_risk: ½‖(Σ̂ − I)Δ‖²_F, the risk of LoRA-One's A₀B₀ = [−G]_r = Σ̂Δ (rank K ≤ r).
    lora_ga_risk_floor: ½Σ_{i>r} σ_i(Δ + O)²; LoRA-GA's effective update AB − O reaches Δ only if
        AB = Δ + O, a rank-up-to-(K + r) matrix: by Eckart–Young no rank-r AB gets below this."""
    delta_space = top_left_singular_vectors(task.delta, task.rank)
    ga_target = np.linalg.svd(task.delta + starts["LoRA-GA"].offset, compute_uv=False)
    return {"sine_floor": alignment_sine(reference, delta_space),
            "lora_one_init_risk": risk(task.covariance @ task.delta, task.delta),
            "lora_ga_risk_floor": 0.5 * float(np.sum(ga_target[config.lora_rank:] ** 2))}


def run_theory(seed: int, config: TheoryConfig = TheoryConfig()) -> dict:
    """All three experiments from one seed; the theory.json dict."""
    rng = np.random.default_rng(seed)
    task = make_task(rng, low_rank_target(rng, config.d, config.k, config.target_singular_values), config.n_samples)
    reference = top_left_singular_vectors(full_gradient(task), task.rank)
    gaussian = rng.standard_normal((config.d, config.lora_rank))
    starts = spectral_starts(task, config, gaussian)
    return {"random_init": random_init_experiment(task, config, gaussian, reference),
            "spectral": spectral_experiment(task, config, starts, reference),
            "phase_portrait": phase_portrait(rng, config),
            "predictions": predictions(task, config, starts, reference),
            "config": asdict(config),
            "seed": seed}


def summary(results: dict) -> str:
    """The console summary: the few numbers that say whether the mechanism showed."""
    lines = ["random init, GD lr 1/64:  σ²      risk@0   risk@end  sine@0  sine@500  sine@end"]
    for key, run in results["random_init"].items():
        lines.append(f"{'':26}{key:7} {run['risk'][0]:8.3g} {run['risk'][-1]:9.3g} {run['sine'][0]:7.3f} "
                     f"{run['sine'][min(500, len(run['sine']) - 1)]:9.3f} {run['sine'][-1]:9.3f}")
    floor = results["predictions"]
    lines.append(f"  converged-sine floor sin∠(col Δ, G_top-K) = {floor['sine_floor']:.3f}")
    lines.append("spectral starts:   method    optimizer  log10 risk@0  @end    sine@0")
    for method, runs in results["spectral"].items():
        for name, run in runs.items():
            lines.append(f"{'':19}{method:9} {name:9} {run['log_risk'][0]:12.2f} {run['log_risk'][-1]:7.2f} "
                         f"{run['sine'][0]:9.2e}")
    lines.append(f"  LoRA-GA's Eckart–Young floor: log10 risk ≥ {np.log10(floor['lora_ga_risk_floor']):.2f}")
    fits = results["phase_portrait"]["steps_to_fit"]
    lines.append("phase portrait, GD steps to risk < tol: " + ", ".join(f"{k}: {v}" for k, v in fits.items()))
    return "\n".join(lines)
