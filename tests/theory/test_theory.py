"""scripts/theory.py and lora_one.theory: the toy's math against closed forms and finite differences,
and the paper's predicted outcomes checked on the outputs of the real command."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import matplotlib.image
import numpy as np
import pytest

from conftest import ROOT
from lora_one import ConfigError
from lora_one.theory import METHODS, TheoryConfig, run_theory
from lora_one.theory.inits import lora_ga_init, lora_one_init
from lora_one.theory.linear_model import (
    alignment_sine,
    full_gradient,
    lora_gradients,
    loss,
    low_rank_target,
    make_task,
    precgd_step,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_command(out_dir, seed=0):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "scripts/theory.py", "--out", str(out_dir), "--seed", str(seed)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out_dir / "theory.json").read_text()), done.stdout


@pytest.fixture(scope="module")
def command(tmp_path_factory):
    """One run of the real command with the paper's settings (seed 0): (theory.json, out dir, stdout)."""
    out_dir = tmp_path_factory.mktemp("theory")
    results, stdout = run_command(out_dir)
    return results, out_dir, stdout


@pytest.fixture
def small_task():
    rng = np.random.default_rng(3)
    return make_task(rng, low_rank_target(rng, 6, 5, (1.0, 0.5)), n_samples=40), rng


def finite_difference(f, X, eps=1e-5):
    """Central differences of a scalar f at every entry of X (exact up to rounding for a quadratic)."""
    grad = np.zeros_like(X)
    for index in np.ndindex(X.shape):
        step = np.zeros_like(X)
        step[index] = eps
        grad[index] = (f(X + step) - f(X - step)) / (2 * eps)
    return grad


# --- the math, against independent references ---------------------------------------------------

def test_full_gradient_is_the_finite_difference_of_the_sample_loss(small_task):
    task, _ = small_task
    r = 2
    zero_A, zero_B = np.zeros((6, r)), np.zeros((r, 5))
    # the loss as a function of the full weight W = W₀ − O: perturb through the offset O = −(W − W₀)
    numeric = finite_difference(lambda W: loss(task, -(W - task.W0), zero_A, zero_B), task.W0)
    np.testing.assert_allclose(full_gradient(task), numeric, rtol=1e-7, atol=1e-9)
    # and the closed form −(1/N)XᵀXΔ, written from the samples rather than Σ̂
    np.testing.assert_allclose(full_gradient(task), -task.X.T @ task.X @ task.delta / len(task.X), rtol=1e-12)


def test_factor_gradients_are_the_finite_differences_of_the_sample_loss(small_task):
    task, rng = small_task
    A, B, offset = rng.standard_normal((6, 3)), rng.standard_normal((3, 5)), rng.standard_normal((6, 5))
    grad_A, grad_B = lora_gradients(task, offset, A, B)
    np.testing.assert_allclose(grad_A, finite_difference(lambda M: loss(task, offset, M, B), A), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(grad_B, finite_difference(lambda M: loss(task, offset, A, M), B), rtol=1e-6, atol=1e-8)


def test_precgd_step_is_the_papers_update_with_explicit_inverses(small_task):
    task, rng = small_task
    A, B, offset = rng.standard_normal((6, 3)), rng.standard_normal((3, 5)), np.zeros((6, 5))
    eta, lam = 0.5, 1e-3
    residual = task.X.T @ (task.X @ (task.W0 - offset + A @ B) - task.labels) / len(task.X)
    expected_A = A - eta * residual @ B.T @ np.linalg.inv(B @ B.T + lam * np.eye(3))
    expected_B = B - eta * np.linalg.inv(A.T @ A + lam * np.eye(3)) @ A.T @ residual
    new_A, new_B = precgd_step(task, offset, A, B, lr=eta, damping=lam)
    np.testing.assert_allclose(new_A, expected_A, rtol=1e-9)
    np.testing.assert_allclose(new_B, expected_B, rtol=1e-9)


@pytest.mark.parametrize("theta", [0.0, 0.3, np.pi / 2])
def test_alignment_sine_is_the_sine_of_a_known_angle(theta):
    reference = np.array([[1.0], [0.0], [0.0]])  # span(e₁)
    A = np.array([[np.cos(theta), 0.0], [np.sin(theta), 0.0], [0.0, 0.01]])  # top direction at angle θ
    assert alignment_sine(reference, A) == pytest.approx(np.sin(theta), abs=1e-12)
    assert alignment_sine(reference, 7.0 * A) == pytest.approx(np.sin(theta), abs=1e-12)  # scale-free


def test_lora_one_init_is_one_full_gradient_step(small_task):
    task, _ = small_task
    start = lora_one_init(full_gradient(task), r=3)  # rank Δ = 2 ≤ r: [−G]_r = −G = Σ̂Δ exactly
    np.testing.assert_allclose(start.A @ start.B, task.X.T @ task.X @ task.delta / len(task.X), atol=1e-12)
    np.testing.assert_allclose(start.A.T @ start.A, start.B @ start.B.T, atol=1e-12)  # balanced √S factors
    assert not start.offset.any()


def test_lora_ga_init_starts_at_zero_update_with_top_input_directions(small_task):
    task, _ = small_task
    G, r = full_gradient(task), 2
    start = lora_ga_init(G, r)
    sigma_1 = np.linalg.norm(G, 2)
    np.testing.assert_allclose(start.A.T @ start.A, sigma_1 * np.eye(r), atol=1e-12)  # c²·I, c² = σ₁(G)
    np.testing.assert_allclose(start.B @ start.B.T, sigma_1 * np.eye(r), atol=1e-12)
    np.testing.assert_allclose(start.A @ start.B - start.offset, 0.0, atol=1e-15)  # the model starts unchanged
    projector = start.A @ start.A.T / sigma_1
    np.testing.assert_allclose(projector @ G, G, atol=1e-12)  # A₀ spans G's top-r input directions (rank G = r)
    np.testing.assert_allclose(G @ start.B.T, 0.0, atol=1e-12)  # B₀ uses output directions r+1..2r, outside G


def test_lora_ga_needs_2r_directions():
    with pytest.raises(ConfigError, match="lora_rank=4"):
        lora_ga_init(np.ones((7, 9)), 4)


def test_same_seed_same_numbers_other_seed_other_numbers():
    quick = replace(TheoryConfig(), d=12, k=10, n_samples=80, target_singular_values=(1.0, 0.5), lora_rank=3,
                    random_steps=15, spectral_steps=10, phase_steps=10)
    first, again, other = run_theory(5, quick), run_theory(5, quick), run_theory(6, quick)
    assert json.dumps(first) == json.dumps(again)
    assert first["random_init"]["0.01"]["risk"] != other["random_init"]["0.01"]["risk"]
    assert first["spectral"]["LoRA-One"]["gd"]["log_risk"] != other["spectral"]["LoRA-One"]["gd"]["log_risk"]


# --- the command's outputs ----------------------------------------------------------------------

def test_theory_json_has_the_documented_schema(command):
    results, _, _ = command
    assert results["seed"] == 0
    assert set(results) >= {"random_init", "spectral", "seed"}
    assert list(results["random_init"]) == ["1", "0.1", "0.01", "0.001", "0.0001"]
    for run in results["random_init"].values():
        assert set(run) == {"risk", "sine"} and len(run["risk"]) == len(run["sine"]) == 1501
    assert list(results["spectral"]) == list(METHODS) == ["LoRA-One", "LoRA-GA", "random"]
    for runs in results["spectral"].values():
        assert set(runs) == {"gd", "precgd"}
        for run in runs.values():
            assert set(run) == {"log_risk", "sine"} and len(run["log_risk"]) == len(run["sine"]) == 101
            assert np.isfinite(run["log_risk"]).all() and np.isfinite(run["sine"]).all()


def test_spectral_init_starts_aligned(command):
    """A₀ = U_r S_r^{1/2} is itself a thin SVD, so its top-K left singular vectors are G's: the sine is
    0 in exact arithmetic. The top-K singular values of A₀ (≥ √σ_K(G) ≈ 0.5) are separated from the
    rest (√σ_{K+1}(G) ≈ 1e-8, rank G = K) by a wide gap, so rounding moves the subspace by ~ε·‖A₀‖/gap
    ≈ 1e-15 (Wedin): 1e-10 leaves five orders of margin while a random 4-dim subspace gives ≈ 1."""
    results, _, _ = command
    for optimizer in ("gd", "precgd"):
        assert results["spectral"]["LoRA-One"][optimizer]["sine"][0] < 1e-10
        assert results["spectral"]["random"][optimizer]["sine"][0] > 0.9


def test_small_random_inits_align_only_after_many_steps(command):
    """Small inits start unaligned, stay so for the first 100 steps (the signal must first grow like
    (1 + ησ_i)^t), then reach the floor that any fitted adapter has: sin∠(col Δ, G's top-K) > 0
    only because Σ̂ ≠ I."""
    results, _, _ = command
    floor = results["predictions"]["sine_floor"]
    assert 0.05 < floor < 0.5
    for key in ("0.001", "0.0001"):
        sine = results["random_init"][key]["sine"]
        assert sine[0] > 0.95 and sine[100] > 0.95
        assert abs(sine[-1] - floor) < 0.02
        assert results["random_init"][key]["risk"][-1] < 1e-3


def test_large_random_init_does_not_align(command):
    results, _, _ = command
    run = results["random_init"]["1"]
    assert min(run["sine"]) > 0.99
    assert run["risk"][-1] > 0.5  # and barely learns: ½‖Δ‖² = 0.9375 at the start


def test_precgd_spectral_init_goes_far_below_lora_ga_plateau(command):
    """LoRA-GA's base offset makes its target Δ + A₀B₀ of rank up to K + r > r: Eckart–Young bounds
    its risk at every step from below, and it plateaus there; LoRA-One's target Δ has rank K ≤ r."""
    results, _, _ = command
    floor = np.log10(results["predictions"]["lora_ga_risk_floor"])
    for optimizer in ("gd", "precgd"):
        ga = np.asarray(results["spectral"]["LoRA-GA"][optimizer]["log_risk"])
        assert ga.min() >= floor - 1e-9
        assert np.ptp(ga[-50:]) < 0.01  # a plateau
    lora_one = results["spectral"]["LoRA-One"]["precgd"]["log_risk"]
    assert lora_one[-1] < floor - 20
    assert lora_one[0] == pytest.approx(np.log10(results["predictions"]["lora_one_init_risk"]), abs=1e-9)


def test_phase_portrait_spectral_start_is_one_gradient_step_and_fits_first(command):
    results, _, _ = command
    portrait = results["phase_portrait"]
    a1, a2, b = portrait["trajectories"]["spectral"][0]
    np.testing.assert_allclose([a1 * b, a2 * b], portrait["negative_gradient"], rtol=1e-12)  # a₀b₀ = −G
    for trajectory in portrait["trajectories"].values():  # every run ends on the minimisers a·b = β
        a1, a2, b = trajectory[-1]
        np.testing.assert_allclose([a1 * b, a2 * b], portrait["target"], atol=1e-6)
    fits = portrait["steps_to_fit"]
    assert fits["spectral"] < min(steps for name, steps in fits.items() if name != "spectral")


def test_figures_are_small_valid_pngs_and_the_summary_prints(command):
    _, out_dir, stdout = command
    for name in ("theory_random_init.png", "theory_spectral.png", "theory_phase_portrait.png"):
        path = out_dir / name
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert matplotlib.image.imread(path).ndim == 3
        assert path.stat().st_size < 150_000
    assert "LoRA-One" in stdout and "Eckart–Young" in stdout
