"""The linear model of the LoRA-One paper's theory, fine-tuned by a rank-r adapter.

Model: y = x (W₀ + Δ) with x ~ N(0, I_d) a row vector, W₀, Δ ∈ R^{d×k}, rank Δ = K. The adapter
writes its update as A·B with A ∈ R^{d×r} on the LEFT: x multiplies from the left, so d is the input
and k the output dimension. PEFT writes y = W x + s·B·A x with W ∈ R^{k×d}, so the toy's weight is
PEFT's transposed and its factors map as A_toy = A_peftᵀ (d×r), B_toy = B_peftᵀ (r×k), s = 1.

The adapted base weight is W₀ − O, where O is a fixed offset (0, or A₀B₀ for an init that moves the
base so the model starts unchanged), and the effective update is E = AB − O. With N samples X ∈ R^{N×d},
the loss is

    L(A, B) = (1/2N) ‖X(W₀ − O + AB) − y‖²_F = ½ tr((E − Δ)ᵀ Σ̂ (E − Δ)),   Σ̂ = XᵀX/N,

so it depends on W₀ not at all, and its gradients are
    ∇_W L = Σ̂(E − Δ),   ∇_A L = Σ̂(E − Δ)Bᵀ,   ∇_B L = AᵀΣ̂(E − Δ).
Gradient descent on this EMPIRICAL loss therefore needs Σ̂ only (d×d instead of N×d per step): an exact
rewriting, not an approximation. The risk is the population one, ½‖E − Δ‖²_F (Σ = I).
"""
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

Factors = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class LinearTask:
    """One draw of the toy: inputs X (N×d), pretrained W₀ (d×k), target update Δ (d×k, rank K), and
    Σ̂ = XᵀX/N, the only statistic of X that the loss's gradients use."""
    X: np.ndarray
    W0: np.ndarray
    delta: np.ndarray
    rank: int
    covariance: np.ndarray

    @property
    def labels(self) -> np.ndarray:
        return self.X @ (self.W0 + self.delta)


def haar_orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n×k with orthonormal columns spanning a uniformly random k-dim subspace (QR of a Gaussian,
    signs fixed by R's diagonal so the distribution is exactly Haar)."""
    Q, R = np.linalg.qr(rng.standard_normal((n, k)))
    return Q * np.sign(np.diag(R))


def low_rank_target(rng: np.random.Generator, d: int, k: int, singular_values) -> np.ndarray:
    """Δ = P diag(σ) Qᵀ with P, Q Haar-random orthonormal: rank K = len(σ), singular values σ."""
    sigma = np.asarray(singular_values, dtype=np.float64)
    return haar_orthonormal(rng, d, len(sigma)) * sigma @ haar_orthonormal(rng, k, len(sigma)).T


def make_task(rng: np.random.Generator, delta: np.ndarray, n_samples: int) -> LinearTask:
    """Draw W₀ ~ N(0, 1) entrywise and X with N i.i.d. N(0, I_d) rows for the given target Δ."""
    d, k = delta.shape
    W0 = rng.standard_normal((d, k))
    X = rng.standard_normal((n_samples, d))
    return LinearTask(X=X, W0=W0, delta=delta, rank=int(np.linalg.matrix_rank(delta)), covariance=X.T @ X / n_samples)


def loss(task: LinearTask, offset: np.ndarray, A: np.ndarray, B: np.ndarray) -> float:
    """(1/2N) ‖X(W₀ − O + AB) − y‖²_F, computed from the samples themselves (no Σ̂ shortcut)."""
    residual = task.X @ (task.W0 - offset + A @ B) - task.labels
    return float(np.sum(residual**2) / (2 * len(task.X)))


def full_gradient(task: LinearTask) -> np.ndarray:
    """G = ∇_W L at the pretrained weight (E = 0): the one-step full fine-tuning gradient, −Σ̂Δ."""
    return -task.covariance @ task.delta


def risk(update: np.ndarray, delta: np.ndarray) -> float:
    """½‖E − Δ‖²_F: the population excess risk of the effective update E."""
    return 0.5 * float(np.sum((update - delta) ** 2))


def lora_gradients(task: LinearTask, offset: np.ndarray, A: np.ndarray, B: np.ndarray) -> Factors:
    """(∇_A L, ∇_B L) = (Σ̂(E − Δ)Bᵀ, AᵀΣ̂(E − Δ)) with E = AB − O."""
    weight_gradient = task.covariance @ (A @ B - offset - task.delta)
    return weight_gradient @ B.T, A.T @ weight_gradient


def gd_step(task: LinearTask, offset: np.ndarray, A: np.ndarray, B: np.ndarray, lr: float) -> Factors:
    """Plain gradient descent on both factors at once (both gradients at the current A, B)."""
    grad_A, grad_B = lora_gradients(task, offset, A, B)
    return A - lr * grad_A, B - lr * grad_B


def precgd_step(task: LinearTask, offset: np.ndarray, A: np.ndarray, B: np.ndarray, lr: float,
                damping: float) -> Factors:
    """Preconditioned GD (Zhang & Pilanci 2024; LoRA-One's analysis), toy orientation:
        A ← A − η ∇_A (BBᵀ + λI)⁻¹,   B ← B − η (AᵀA + λI)⁻¹ ∇_B.
    Each factor's step is the gradient in the metric of the other factor's Gram matrix, which removes
    the factors' conditioning from the convergence rate. (The r×r systems are symmetric, so the right
    multiplication by (BBᵀ + λI)⁻¹ is a solve of the transposed system.)"""
    grad_A, grad_B = lora_gradients(task, offset, A, B)
    eye = np.eye(A.shape[1])
    step_A = np.linalg.solve(B @ B.T + damping * eye, grad_A.T).T
    step_B = np.linalg.solve(A.T @ A + damping * eye, grad_B)
    return A - lr * step_A, B - lr * step_B


def iterate(step: Callable[[np.ndarray, np.ndarray], Factors], A: np.ndarray, B: np.ndarray,
            steps: int) -> Iterator[Factors]:
    """(A_t, B_t) for t = 0 (the init itself), 1, …, steps."""
    yield A, B
    for _ in range(steps):
        A, B = step(A, B)
        yield A, B


def top_left_singular_vectors(M: np.ndarray, k: int) -> np.ndarray:
    """The first k left singular vectors of M (d×k, orthonormal columns)."""
    return np.linalg.svd(M, full_matrices=False)[0][:, :k]


def alignment_sine(reference: np.ndarray, A: np.ndarray) -> float:
    """sin θ_max = ‖U_{G,⊥}ᵀ U_{A,1:K}‖₂ with K = reference.shape[1]: the largest principal-angle sine
    between A's top-K left singular subspace and the reference subspace (orthonormal columns, e.g. G's
    top-K left singular vectors). Computed as ‖(I − U_G U_Gᵀ) U_A‖₂, which has the same singular values
    as U_{G,⊥}ᵀ U_A without forming the d×(d−K) complement. 0 = aligned, 1 = some direction orthogonal."""
    U_A = top_left_singular_vectors(A, reference.shape[1])
    outside = U_A - reference @ (reference.T @ U_A)
    return float(np.linalg.norm(outside, 2))
