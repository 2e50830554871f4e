"""From the SVD of the one-step full gradient G to LoRA factors: the parts every spectral init shares.

Convention (PEFT): the adapted weight is W + s·B·A with B ∈ R^{m×r}, A ∈ R^{r×n},
s = α/r (or α/√r with rsLoRA), m = out features, n = in features. The directions themselves live
with their methods (lora_one.py, lora_ga.py).
"""
import torch

SCALES = ("stable", "gd", "unit")
SVD_METHODS = ("full", "lowrank")


def top_singular_triplets(G: torch.Tensor, k: int, method: str = "full", q: int | None = None, niter: int = 4):
    """The top-k singular triplets of G in fp32: U (m×k), S (k), Vh (k×n), G ≈ U diag(S) Vh.

    `full` is torch.linalg.svd; `lowrank` is torch.svd_lowrank with q columns (None: 4k; at least k)
    and `niter` power iterations (the official LoRA-One setting is q=512, niter=16; q=4k, niter=4
    aligns with the full SVD to 1 − 1e-6 on SmolLM2's gradients, bench/README.md). The slices are
    copied: a view would keep the whole m×min(m,n) U and min(m,n)×n Vh alive, as large as G."""
    G = G.float()
    if method == "full":
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    elif method == "lowrank":
        U, S, V = torch.svd_lowrank(G, q=min(max(q or 4 * k, k), min(G.shape)), niter=niter)
        Vh = V.T
    else:
        raise ValueError(f"unknown SVD method {method!r}; use one of {SVD_METHODS}")
    return U[:, :k].clone(), S[:k].clone(), Vh[:k].clone()


def scale_factors(B: torch.Tensor, A: torch.Tensor, scale: str, stable_factor: float, lora_scaling: float):
    """Scale both factors: `stable` by the method's own `stable_factor`, `gd` by 1/s (the adapter's
    scaling), `unit` not at all."""
    factor = {"stable": stable_factor, "gd": 1.0 / lora_scaling, "unit": 1.0}.get(scale)
    if factor is None:
        raise ValueError(f"unknown scale {scale!r}; use one of {SCALES}")
    return B * factor, A * factor
