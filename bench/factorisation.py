"""Benchmark 4: the rank-r factorisation alone on Llama-2-7B weight shapes, on gradient-like matrices
(a rank-R part with a power-law spectrum σ_j = j^(−decay), plus dense Gaussian noise whose spectral
norm is `noise` × σ₁), against the full SVD (torch.linalg.svd): speed ratio and the mean cosine of the
principal angles between the top-r left and right singular subspaces.

    sketch     the sketch estimator's factorisation: Y = GΩ, Z = ΨᵀG (here computed from the
               materialised G; during the init they are folded in during backprop instead), then
               the single-pass SVD (k = r + oversampling, l = 2k + 1)
    official   torch.svd_lowrank(q=512, niter=16), the official LoRA-One setting

Targets: ≥ 50× faster than the full SVD, alignment ≥ 0.99. One repetition per shape (the full SVD
of a 4096×11008 matrix takes minutes on a few CPU cores).

    python bench/factorisation.py [--shapes 4096x4096 4096x11008 11008x4096] [--rank 8] [--oversampling 8]
"""
import argparse
import time

import torch

from common import report
from lora_one.init.estimators.sketch import GradientSketch
from lora_one.init.spectral import top_singular_triplets


def gradient_like(m: int, n: int, rank: int, decay: float, noise: float, generator: torch.Generator) -> torch.Tensor:
    U, _ = torch.linalg.qr(torch.randn(m, rank, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(n, rank, generator=generator))
    sigma = torch.arange(1, rank + 1, dtype=torch.float32) ** -decay
    E = torch.randn(m, n, generator=generator) * (noise / (m**0.5 + n**0.5))  # ‖E‖₂ ≈ noise·σ₁
    return (U * sigma) @ V.T + E


def sketch_factorisation(G: torch.Tensor, r: int, oversampling: int):
    sketch = GradientSketch(*G.shape, rank=r, oversampling=oversampling, generator=torch.Generator().manual_seed(0),
                            device=G.device)
    sketch.range = G @ sketch.omega
    sketch.corange = sketch.psi.T @ G
    return sketch.top_singular_triplets(r)


def timed(fn, device: torch.device):
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def alignment(U_ref, U) -> float:
    return torch.linalg.svdvals(U_ref.T @ U).mean().item()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["4096x4096", "4096x11008", "11008x4096"])
    parser.add_argument("--rank", type=int, default=8, help="r: the LoRA rank (top-r subspaces compared)")
    parser.add_argument("--oversampling", type=int, default=8)
    parser.add_argument("--signal-rank", type=int, default=256)
    parser.add_argument("--decay", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--skip-official", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator().manual_seed(0)
    rows, summary = [], {}
    for shape in args.shapes:
        m, n = map(int, shape.split("x"))
        G = gradient_like(m, n, args.signal_rank, args.decay, args.noise, generator).to(device)
        methods = {"sketch": lambda: sketch_factorisation(G, args.rank, args.oversampling)}
        if not args.skip_official:
            methods["official"] = lambda: top_singular_triplets(G, args.rank, "lowrank", 512, 16)
        methods["full SVD"] = lambda: top_singular_triplets(G, args.rank, "full")
        results = {name: timed(fn, device) for name, fn in methods.items()}
        (U_ref, _, Vh_ref), full_seconds = results["full SVD"]
        for name, ((U, _, Vh), seconds) in results.items():
            cos_u, cos_v = alignment(U_ref, U), alignment(Vh_ref.T, Vh.T)
            rows.append([shape, name, seconds, full_seconds / seconds, cos_u, cos_v])
            if name == "sketch":
                summary[shape] = {"sketch_speedup": full_seconds / seconds, "sketch_alignment": min(cos_u, cos_v)}
    summary.update(target_speedup=50, target_alignment=0.99, rank=args.rank, oversampling=args.oversampling,
                   matrix=f"rank {args.signal_rank}, sigma_j = j^-{args.decay}, noise {args.noise} sigma_1",
                   device=str(device))
    report("factorisation", ["shape", "method", "seconds", "full SVD / method", "cos U", "cos V"], rows, summary)


if __name__ == "__main__":
    main()
