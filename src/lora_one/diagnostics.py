"""Alignment diagnostics (`diagnostics.alignment_every=N`): does training align the adapter with the
one-step full gradient G, as LoRA-One's analysis says, and does the spectral init start aligned?

For each adapted layer with rank r and G = U S Vᵀ at the pretrained weights, we track
  - cos_B: the mean cosine of the principal angles between col(B_t) and span(U_r) (G's top-r left
    singular subspace): σ_i(Q_Bᵀ U_r) averaged over i, Q_B an orthonormal basis of col(B_t);
  - cos_A: the same between row(A_t) and span(V_r) (the top-r right one);
  - norm: ‖s·B_tA_t‖_F, from the r×r Gram matrices: ‖BA‖²_F = tr((BᵀB)(AAᵀ)).
1 = aligned; a random r-dimensional subspace of R^n scores far less (about √(r/n) for r ≪ n); a
zero factor (B₀ of PEFT's default init) has no column space: None. Only U_r and V_r are kept, never
G; they are computed once, before the init, by the streaming estimator on the first
`diagnostics.bsz × diagnostics.iters` training examples (the init's batches by default), with plain
zero-B adapters, so every init is measured against the same G at W₀."""
import logging
import os
from collections import defaultdict

import torch
from accelerate import Accelerator
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel

from lora_one.init import METHODS
from lora_one.init.gradient_init import gradient_spectra
from lora_one.models.adapters import ADAPTER, add_lora_adapters, lora_layers

log = logging.getLogger(__name__)

# The estimator settings of the reference G: exact G, one streaming backward, full SVD.
STREAMING = {"estimator": "streaming", "svd": "full", "svd_q": 0, "svd_niter": 0, "save_artifacts": False,
             "checkpointing": "auto", "oversampling": 0, "sketch_seed": 0}


def projection_type(layer_name: str) -> str:
    """`model.layers.3.self_attn.q_proj.weight` → `q_proj`."""
    return layer_name.rsplit(".", 2)[-2]


def principal_cosines_mean(basis: torch.Tensor, reference: torch.Tensor) -> float | None:
    """Mean cosine of the principal angles between col(basis) and col(reference) (orthonormal columns).
    None when `basis` is zero (no subspace)."""
    basis = basis.double()
    if not basis.abs().max() > 0:
        return None
    Q, R = torch.linalg.qr(basis)
    Q = Q[:, R.diagonal().abs() > 1e-12 * R.diagonal().abs().max()]  # the rank's worth of directions
    k = min(Q.shape[1], reference.shape[1])
    return torch.linalg.svdvals(Q.T @ reference.double())[:k].mean().item()


@torch.no_grad()
def adapter_norm(layer) -> float:
    """‖s·BA‖_F through r×r Gram matrices (no m×n product)."""
    B, A = layer.lora_B[ADAPTER].weight.double(), layer.lora_A[ADAPTER].weight.double()
    return layer.scaling[ADAPTER] * torch.trace((B.T @ B) @ (A @ A.T)).clamp(min=0).sqrt().item()


class AlignmentDiagnostics:
    """The top-r singular vectors of G per layer, and the curves measured against them."""

    def __init__(self, references: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.references = references  # layer → (U_r m×r, V_r n×r), on the CPU in fp32
        self.steps: list[int] = []
        self.layers: dict[str, dict[str, list]] = {name: {"cos_B": [], "cos_A": [], "norm": []} for name in references}

    @classmethod
    def at_pretrained(cls, model, cfg: DictConfig, batches: list[dict],
                      accelerator: Accelerator) -> "AlignmentDiagnostics":
        """G's top-r singular vectors at the pretrained `model` (not yet wrapped): wrapped with zero-B
        LoRA adapters of `cfg.peft` for the estimator's layer list, then unwrapped."""
        log.info("alignment diagnostics: G's top singular vectors at the pretrained weights…")  # its progress follows
        wrapped = add_lora_adapters(model, cfg.peft, cfg.model.type, METHODS["LoRA"], cfg.init)
        needed = {name: layer.r[ADAPTER] for name, layer in lora_layers(wrapped).items()}
        estimator = OmegaConf.create(STREAMING)
        _, spectra = gradient_spectra(wrapped, estimator, batches, accelerator, needed, cfg.model.type == "seq2seq")
        wrapped.unload()  # the base model back, unchanged (B = 0 was never merged)
        return cls({name: (U.cpu(), Vh.T.cpu()) for name, (U, _, Vh, _) in spectra.items()})

    @torch.no_grad()
    def measure(self, model: PeftModel, step: int) -> dict[str, float]:
        """Append every layer's (cos_B, cos_A, norm) at `step`; returns the per-type means to log."""
        self.steps.append(step)
        for name, layer in lora_layers(model).items():
            U, V = self.references[name]
            curves = self.layers[name]
            curves["cos_B"].append(principal_cosines_mean(layer.lora_B[ADAPTER].weight.cpu(), U))
            curves["cos_A"].append(principal_cosines_mean(layer.lora_A[ADAPTER].weight.cpu().T, V))
            curves["norm"].append(adapter_norm(layer))
        return {f"alignment/{quantity}/{kind}": values[-1] for kind, by_quantity in self.by_type().items()
                for quantity, values in by_quantity.items() if values[-1] is not None}

    def by_type(self) -> dict[str, dict[str, list]]:
        """Per projection type (q_proj, …, down_proj), each curve averaged over that type's layers
        (a step where some layer has None averages the others; all None gives None)."""
        grouped = defaultdict(list)
        for name, curves in self.layers.items():
            grouped[projection_type(name)].append(curves)
        means = {}
        for kind, members in grouped.items():
            means[kind] = {}
            for quantity in ("cos_B", "cos_A", "norm"):
                per_step = zip(*(m[quantity] for m in members))
                means[kind][quantity] = [sum(v) / len(v) if (v := [x for x in values if x is not None]) else None
                                         for values in per_step]
        return means

    def points(self) -> dict:
        """The points measured so far (steps, per-layer curves), for a checkpoint to carry to a resumed run."""
        return {"steps": self.steps, "layers": self.layers}

    def continue_from(self, points: dict) -> None:
        """Start from the points a checkpoint carried (`points()`; none in one written without diagnostics)."""
        if points:
            self.steps = list(points["steps"])
            self.layers = {name: {quantity: list(values) for quantity, values in curves.items()}
                           for name, curves in points["layers"].items()}

    def curves(self) -> dict:
        """What results.json records: steps, per-type means, per-layer curves."""
        return {"steps": self.steps, "by_type": self.by_type(), "layers": self.layers}

    def plot(self, path: str) -> None:
        """alignment.png: cos_B, cos_A and ‖sBA‖_F against the step, one line per projection type."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), constrained_layout=True)
        titles = {"cos_B": "col(B) vs G's top-r left", "cos_A": "row(A) vs G's top-r right", "norm": "‖s·BA‖_F"}
        for kind, means in sorted(self.by_type().items()):
            for ax, quantity in zip(axes, titles):
                points = [(s, v) for s, v in zip(self.steps, means[quantity]) if v is not None]
                if points:
                    ax.plot(*zip(*points), marker=".", label=kind)
        for ax, (quantity, title) in zip(axes, titles.items()):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("optimizer step")
            if quantity != "norm":
                ax.set_ylim(0, 1.02)
                ax.set_ylabel("mean principal-angle cosine")
        axes[-1].legend(fontsize=7)
        fig.savefig(path, dpi=90)
        plt.close(fig)


def alignment_diagnostics(cfg: DictConfig, model, batches_for_g, accelerator: Accelerator):
    """The diagnostics of a run, or None when `diagnostics.alignment_every` is 0. `batches_for_g()`
    gives the micro-batches of G (only called when the diagnostics are on)."""
    if cfg.diagnostics.alignment_every <= 0:
        return None
    return AlignmentDiagnostics.at_pretrained(model, cfg, batches_for_g(), accelerator)


def finish_diagnostics(diagnostics: AlignmentDiagnostics | None, out_dir: str, is_main_process: bool) -> dict:
    """results.json's `alignment` entry (empty when off) and, on the main process, out_dir/alignment.png."""
    if diagnostics is None:
        return {}
    if is_main_process:
        diagnostics.plot(os.path.join(out_dir, "alignment.png"))
    return {"alignment": diagnostics.curves()}
