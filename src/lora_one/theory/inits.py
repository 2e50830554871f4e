"""The adapter inits compared on the toy, in its orientation (A ∈ R^{d×r} left, B ∈ R^{r×k}).

Each returns a `Start`: the factors and the base offset O (the adapted base is W₀ − O, the effective
update AB − O). The framework's PEFT formulas (src/lora_one/init/spectral.py: B_peft out×r, A_peft
r×in, G_peft = G_toyᵀ) become these under A_toy = A_peftᵀ, B_toy = B_peftᵀ: PEFT's left singular
vectors of G (output side) are the toy's right ones and vice versa.
"""
from dataclasses import dataclass

import numpy as np

from lora_one import ConfigError


@dataclass(frozen=True)
class Start:
    A: np.ndarray
    B: np.ndarray
    offset: np.ndarray


def random_init(gaussian: np.ndarray, k: int, variance: float) -> Start:
    """Classic LoRA: A₀ = σ·Z with Z the given standard Gaussian d×r draw (so every σ² shares one
    direction and differs only in scale), B₀ = 0, no offset: the model starts unchanged."""
    d, r = gaussian.shape
    return Start(A=np.sqrt(variance) * gaussian, B=np.zeros((r, k)), offset=np.zeros((d, k)))


def lora_one_init(G: np.ndarray, r: int) -> Start:
    """LoRA-One's spectral init with −G = U S Vᵀ: A₀ = U_r S_r^{1/2}, B₀ = S_r^{1/2} V_rᵀ, base kept, so

        A₀B₀ = [−G]_r:  one best-rank-r full-gradient step of length 1.

    Scale: the framework's s·B₀A₀ = −(s/(γσ₁))[G]_r with γ = s/σ₁(G), i.e. unit step size. It is the
    natural step here because the population gradient is −Δ (E[Σ̂] = I): the step lands on [Σ̂Δ]_r,
    at distance ‖(Σ̂ − I)Δ‖ from the target. Its left factor IS a thin SVD of itself, so A₀'s top-K
    left singular vectors are G's: the init starts aligned (sine 0 up to rounding)."""
    U, S, Vh = np.linalg.svd(-G, full_matrices=False)
    root = np.sqrt(S[:r])
    return Start(A=U[:, :r] * root, B=root[:, None] * Vh[:r], offset=np.zeros_like(G))


def lora_ga_init(G: np.ndarray, r: int) -> Start:
    """LoRA-GA's directions from the SVD of +G = U S Vᵀ (toy orientation). PEFT's B₀ = U_peft[:, r:2r]
    (output side) and A₀ = V_peft[:, :r]ᵀ (input side) become, transposed,

        A₀ = c·U[:, :r] (input side, top r),   B₀ = c·V[:, r:2r]ᵀ (output side, r+1..2r),   O = A₀B₀,

    so the effective update starts at 0. Scale c = √σ₁(G): ‖A₀B₀‖₂ = σ₁(G) = ‖LoRA-One's A₀B₀‖₂, a
    like-for-like start; in LoRA-GA's own "stable" rule c = k^{1/4}/√γ this is γ = √k/σ₁(G).
    Note rank G = K < 2r here, so V[:, r:2r] spans directions G does not contain at all."""
    if 2 * r > min(G.shape):
        raise ConfigError(f"LoRA-GA needs 2r <= min(d, k): lora_rank={r} with G of shape {G.shape}")
    U, S, Vh = np.linalg.svd(G)
    c = np.sqrt(S[0])
    A, B = c * U[:, :r], c * Vh[r : 2 * r]
    return Start(A=A, B=B, offset=A @ B)
