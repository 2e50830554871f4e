"""Benchmark 3: fidelity of each estimator against `exact` (all of G, full SVD) on SmolLM2-135M.

Per layer: the relative error ‖G − G_exact‖_F/‖G_exact‖_F where the estimator forms G (streaming),
and the mean cosine of the principal angles between the top-r left (and right) singular subspaces
of the estimate and of G_exact; then the held-out loss right after the LoRA-One init.
Targets: streaming G rel. error ≤ 1e-5 and alignment ≥ 0.999 per layer (issue 10); sketch mean
alignment ≥ 0.99 (issue 6); loss within 1 % of exact's.

    python bench/init_fidelity.py [--lowrank 16:2 32:4] [--oversampling 8 24 | --oversampling (no sketch)]
"""
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf

from common import init_bench_parser, report, smollm2_lora
from lora_one.init import init_method
from lora_one.init.gradient_init import gradient_spectra
from lora_one.models.adapters import ADAPTER, lora_layers
from lora_one.train import evaluate_loss


def subspace_alignment(U_ref: torch.Tensor, U: torch.Tensor) -> float:
    """Mean cosine of the principal angles between span(U_ref) and span(U) (orthonormal columns)."""
    return torch.linalg.svdvals(U_ref.T @ U).mean().item()


def main():
    parser = init_bench_parser(__doc__, "sketch oversampling values to compare (default: the config's)")
    parser.add_argument("--lowrank", nargs="+", default=["16:2", "32:2", "32:4"],
                        help="streaming with svd=lowrank, as q:niter pairs")
    args = parser.parse_args()
    cfg, _, model, batches, eval_batches = smollm2_lora(micro_batches=args.micro_batches)
    accelerator = Accelerator(cpu=True)
    method = init_method(cfg.init)
    r = cfg.peft.lora_r
    needed = {name: method.singular_directions(layer.r[ADAPTER]) for name, layer in lora_layers(model).items()}

    def estimate(overrides):
        init_cfg = OmegaConf.merge(cfg.init, overrides)
        grads, spectra = gradient_spectra(model, init_cfg, batches, accelerator, needed, seq2seq=False)
        method.write_adapters(model, init_cfg, spectra)
        return grads, spectra, evaluate_loss(model, eval_batches, accelerator)

    exact_grads, exact, exact_loss = estimate({"estimator": "exact", "svd": "full"})
    variants = {"streaming (full SVD)": {"estimator": "streaming", "svd": "full", "save_artifacts": True}}
    for pair in args.lowrank:
        q, niter = map(int, pair.split(":"))
        variants[f"streaming lowrank q={q} niter={niter}"] = {"estimator": "streaming", "svd": "lowrank", "svd_q": q,
                                                              "svd_niter": niter, "save_artifacts": True}
    # `--oversampling` alone: no sketch
    for p in [cfg.init.oversampling] if args.oversampling is None else args.oversampling:
        variants[f"sketch p={p}"] = {"estimator": "sketch", "oversampling": p}
    rows, summary = [["exact (full SVD)", 0.0, 1.0, 1.0, 1.0, "-", exact_loss, 0.0]], {}
    for name, overrides in variants.items():
        grads, spectra, loss = estimate(overrides)
        g_error = max(((grads[k] - exact_grads[k]).norm() / exact_grads[k].norm()).item() for k in exact) \
            if grads is not None else float("nan")
        per_layer = {k: (subspace_alignment(exact[k][0][:, :r], spectra[k][0][:, :r]),
                         subspace_alignment(exact[k][2][:r].T, spectra[k][2][:r].T)) for k in exact}
        left = sum(a for a, _ in per_layer.values()) / len(per_layer)
        right = sum(b for _, b in per_layer.values()) / len(per_layer)
        worst = min(per_layer, key=lambda k: min(per_layer[k]))
        rel = abs(loss - exact_loss) / exact_loss
        rows.append([name, g_error, left, right, min(per_layer[worst]), worst, loss, rel])
        summary[name] = {"max_G_rel_error": g_error, "mean_alignment": (left + right) / 2,
                         "worst_layer": worst, "worst_alignment": min(per_layer[worst]), "loss_rel_diff": rel}
    report("init_fidelity", ["method", "max G rel. err", "mean cos U", "mean cos V", "worst layer cos", "worst layer",
                             "loss after init", "rel. diff"], rows, summary)


if __name__ == "__main__":
    main()
