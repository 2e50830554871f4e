"""LoRA-GA (Wang et al., NeurIPS 2024): factors chosen so that the first training step on B₀A₀ best
approximates a full gradient step; the base weight is offset so the model is unchanged at init."""
import torch

from lora_one.init.gradient_init import GradientInit
from lora_one.init.method import register


def lora_ga_factors(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, r: int):
    """From the SVD of +G, before scaling:  B₀ = U[:, r:2r],  A₀ = V[:, :r]ᵀ."""
    return U[:, r : 2 * r], Vh[:r]


@register
class LoRAGA(GradientInit):
    name = "LoRA-GA"
    moves_base = True  # W ← W − s·B₀A₀

    def singular_directions(self, r: int) -> int:
        return 2 * r

    def factors(self, U, S, Vh, r):
        return lora_ga_factors(U, S, Vh, r)

    def stable_factor(self, m: int, gamma: float) -> float:
        """LoRA-GA's "stable" output scale m^{1/4}/√γ on both factors."""
        return m**0.25 / gamma**0.5
