"""`sketch`: the top singular triplets of each linear layer's weight gradient from two small random
sketches, accumulated token by token during backprop, so the m×n gradient is never formed (approximate).

For a linear layer y = W x (W ∈ R^{m×n}) the gradient of the loss over the tokens t is

    G = ∂L/∂W = Σₜ δₜ xₜᵀ,    δₜ = ∂L/∂yₜ ∈ R^m,  xₜ ∈ R^n,

so any product of G with a thin test matrix is a sum of products of thin matrices with the
layer's input and output gradient, which forward/backward hooks see one micro-batch at a time.
"""
import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from peft import PeftModel

from lora_one.init.estimators.shared import activations_require_grad, backpropagate, frozen_pretrained
from lora_one.models.adapters import lora_layers


class GradientSketch:
    """Range sketch Y = G Ω (m×k) and co-range sketch Z = Ψᵀ G (l×n) of one layer's gradient, for
    fixed Gaussian test matrices Ω ∈ R^{n×k}, Ψ ∈ R^{m×l} drawn from `generator` (so every process
    that seeds it alike draws the same ones). Memory: (m + n)(k + l) floats instead of m·n.

    k = min(rank + oversampling, m, n) and l = min(2k + 1, m), the co-range size Tropp et al. (2017)
    recommend for a given k."""

    def __init__(self, m: int, n: int, rank: int, oversampling: int, generator: torch.Generator, device):
        k = min(rank + oversampling, m, n)
        l = min(2 * k + 1, m)
        self.omega = torch.randn(n, k, generator=generator).to(device)
        self.psi = torch.randn(m, l, generator=generator).to(device)
        self.range = torch.zeros(m, k, device=device)
        self.corange = torch.zeros(l, n, device=device)

    @torch.no_grad()
    def add(self, x: torch.Tensor, dy: torch.Tensor) -> None:
        """Fold in one micro-batch's tokens: with X (T×n) the inputs and Δ (T×m) the output gradients,

            Y += Σₜ δₜ (Ωᵀxₜ)ᵀ = Δᵀ (X Ω),      Z += Σₜ (Ψᵀδₜ) xₜᵀ = (Δ Ψ)ᵀ X,

        O(T (m + n)(k + l)) work, in fp32 whatever the model's dtype."""
        X = x.reshape(-1, x.shape[-1]).float()
        D = dy.reshape(-1, dy.shape[-1]).float()
        self.range.addmm_(D.T, X @ self.omega)
        self.corange.addmm_((D @ self.psi).T, X)

    def frobenius_sq(self) -> float:
        """Unbiased estimate of ‖G‖²_F: E‖GΩ‖²_F = k‖G‖²_F and E‖ΨᵀG‖²_F = l‖G‖²_F for N(0, 1) entries."""
        k, l = self.range.shape[1], self.corange.shape[0]
        return ((self.range.square().sum() + self.corange.square().sum()) / (k + l)).item()

    def top_singular_triplets(self, r: int):
        return single_pass_svd(self.range, self.corange, self.psi, r)


def single_pass_svd(Y: torch.Tensor, Z: torch.Tensor, Psi: torch.Tensor, r: int):
    """Top-r singular triplets U (m×r), S (r), Vh (r×n) of G from its sketches Y = GΩ and Z = ΨᵀG
    alone: the single-pass randomized SVD of Tropp, Yurtsever, Udell & Cevher (2017, "Practical
    sketching algorithms for low-rank matrix approximation", SIMAX), fixed-rank variant:

        Q = orth(Y)                      Q ∈ R^{m×k}, an orthonormal basis of the sketched range
        X = (Ψᵀ Q)† Z                    least squares: Ψᵀ(Q X) ≈ ΨᵀG, so X ≈ QᵀG ∈ R^{k×n}
        X = Ũ Σ Vᵀ   (SVD of k×n)        G ≈ Q X = (Q Ũ) Σ Vᵀ
        U, S, Vh = (Q Ũ)[:, :r], Σ[:r], Vᵀ[:r]      the rank-r truncation [Q X]_r

    If rank G ≤ k the range of Y is that of G, ΨᵀQ has full column rank (almost surely), X = QᵀG
    and the triplets are G's own. Otherwise the error is within a factor of the best rank-k one that
    shrinks as k − r and l − k grow (the oversampling). Cost O((m + n) k l), no m×n matrix."""
    Q, _ = torch.linalg.qr(Y)
    X = torch.linalg.lstsq(Psi.T @ Q, Z).solution
    U_small, S, Vh = torch.linalg.svd(X, full_matrices=False)
    return (Q @ U_small)[:, :r], S[:r], Vh[:r]


def sketched_gradient(model: PeftModel, batches: list[dict], accelerator: Accelerator, ranks: dict[str, int],
                      oversampling: int, seed: int) -> dict[str, GradientSketch]:
    """Sketches Y = GΩ, Z = ΨᵀG of the same G as `exact_full_gradient` (estimators/exact.py), for every LoRA
    target weight, with room for its top `ranks[name]` directions plus `oversampling`.

    No weight ever requires grad (backprop computes activation gradients only). A forward hook on
    each target layer keeps its input x (which a LoRA training step keeps too, for ∂L/∂A) and hooks
    the output, whose gradient δ folds (x, δ) into the sketches as backprop passes. The test matrices come from one
    generator seeded with `seed`, the same on every process; the sketches are all-reduced."""
    layers = lora_layers(model)
    generator = torch.Generator().manual_seed(seed)
    sketches = {}
    for name, layer in layers.items():
        base = layer.get_base_layer()
        sketches[name] = GradientSketch(base.out_features, base.in_features, ranks[name], oversampling, generator,
                                        base.weight.device)

    def watch(module, inputs, output, sketch):
        if output.requires_grad:
            x = inputs[0]
            output.register_hook(lambda dy: sketch.add(x, dy))

    hooks = []
    with frozen_pretrained(model), activations_require_grad(model):
        try:
            for name, layer in layers.items():
                hooks.append(layer.get_base_layer().register_forward_hook(
                    lambda module, inputs, output, sketch=sketches[name]: watch(module, inputs, output, sketch)))
            backpropagate(model, batches, accelerator, "one-step gradient sketch")
        finally:
            for hook in hooks:
                hook.remove()
    if accelerator.num_processes > 1:
        for sketch in sketches.values():
            sketch.range, sketch.corange = accelerator.reduce([sketch.range, sketch.corange], reduction="sum")
    return sketches


def estimate(model: PeftModel, cfg: DictConfig, batches: list[dict], accelerator: Accelerator,
             needed: dict[str, int], seq2seq: bool):
    """(None: G is never formed, {layer: (U, S, Vh, estimated ‖G‖²_F)}) from sketches sized by
    `init.oversampling`, drawn with `init.sketch_seed`; the model's loss already knows `seq2seq`."""
    sketches = sketched_gradient(model, batches, accelerator, needed, cfg.oversampling, cfg.sketch_seed)
    return None, {name: (*s.top_singular_triplets(needed[name]), s.frobenius_sq()) for name, s in sketches.items()}
