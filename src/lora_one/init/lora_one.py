"""LoRA-One (Zhang, Liu, Chen, ICML 2025): the adapter starts as one best-rank-r, spectrally
normalised gradient-descent step; the base weight is kept."""
import torch

from lora_one.init.gradient_init import GradientInit
from lora_one.init.method import register


def lora_one_factors(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, r: int):
    """Alg. 1 before scaling: with −G = (−U) S Vᵀ,

        B₀ = −U_r S_r^{1/2} / √σ₁,   A₀ = S_r^{1/2} V_rᵀ / √σ₁,   so  B₀A₀ = −[G]_r / σ₁."""
    root = (S[:r] / S[0]).sqrt()
    return -U[:, :r] * root, root[:, None] * Vh[:r]


@register
class LoRAOne(GradientInit):
    name = "LoRA-One"

    def singular_directions(self, r: int) -> int:
        return r

    def factors(self, U, S, Vh, r):
        return lora_one_factors(U, S, Vh, r)

    def stable_factor(self, m: int, gamma: float) -> float:
        """Both factors divided by √γ: s·B₀A₀ = −(s/(γσ₁))[G]_r."""
        return gamma**-0.5
