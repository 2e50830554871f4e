"""The γ × rank study of LoRA-One's stable scale: held-out loss right after the init and after a
short training, for every γ of a grid plus `init.stable_gamma=auto`, at every LoRA rank r.

    python scripts/gamma_rank.py --out gamma_rank/ [--gammas 8 16 32 64 128 256 512] [--ranks 4 8 16 32] [overrides…]

The setting is `experiment=gamma_rank` (SmolLM2-135M, GSM8K, short sequences, a few AdamW steps);
extra arguments are Hydra overrides of it. G is estimated once, with the top max(ranks) singular
triplets of every layer (its top-r ones serve every r); each cell wraps a fresh copy of the base with
rank-r adapters and writes LoRA-One's factors at its γ (auto: the line search of
init/gamma_search.py on the micro-batches after G's). Every finished cell is appended to
OUT/cells.jsonl and G's triplets are kept in OUT/spectra.pt: a relaunch skips what is done. At the
end OUT/gamma_rank.png (two heat-maps, loss / base loss) and OUT/summary.json are written.
"""
import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("LORA_ONE_CONF", str(ROOT / "conf"))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lora_one.config import compose_config, validate_config  # noqa: E402
from lora_one.data import encode_rows, load_splits, make_batches, make_collator  # noqa: E402
from lora_one.init import init_method  # noqa: E402
from lora_one.init.gamma_search import AUTO, search_gamma  # noqa: E402
from lora_one.init.gradient_init import gradient_spectra  # noqa: E402
from lora_one.models import add_lora_adapters, load_model, load_tokenizer, lora_layers  # noqa: E402
from lora_one.train import build_optimizer, build_scheduler, evaluate_loss, train  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--gammas", type=float, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32], help="run in this order")
    parser.add_argument("--plot-only", action="store_true", help="draw and summarise the cells done so far, run none")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of experiment=gamma_rank")
    return parser.parse_args()


def done_cells(path: Path) -> dict:
    if not path.exists():
        return {}
    cells = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(c["r"], c["gamma"]): c for c in cells}


class Study:
    """Data, base model and G's spectra, built once; `cell(r, gamma)` runs one grid point."""

    def __init__(self, cfg, max_rank: int, spectra_path: Path):
        self.cfg = cfg
        self.accelerator = Accelerator(cpu=True)
        set_seed(cfg.seed)
        tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
        train_rows, eval_rows = load_splits(cfg.dataset, cfg.seed)
        self.train_set = encode_rows(tokenizer, train_rows, cfg.model.max_length, False)
        self.collate = make_collator(tokenizer)
        self.eval_loader = DataLoader(encode_rows(tokenizer, eval_rows, cfg.model.max_length, False),
                                      batch_size=cfg.model.per_device_batch_size, collate_fn=self.collate)
        init_cfg = copy.deepcopy(cfg.init)
        init_cfg.stable_gamma = AUTO  # to count the search batches
        method = init_method(cfg.init)
        self.batches = make_batches(tokenizer, encode_rows(tokenizer, train_rows, cfg.init.max_length, False),
                                    cfg.init.bsz, method.batch_count(init_cfg))
        self.base = load_model(cfg.model, tokenizer, cfg.cache_dir)
        self.base_loss = evaluate_loss(self.base, self.eval_loader, self.accelerator)
        if spectra_path.exists():  # a relaunch: G's top triplets from the first launch
            self.spectra = torch.load(spectra_path)
            return
        start = time.perf_counter()
        wrapped = add_lora_adapters(copy.deepcopy(self.base), self.peft(max_rank), "causal", method, cfg.init)
        needed = {name: max_rank for name in lora_layers(wrapped)}
        _, self.spectra = gradient_spectra(wrapped, cfg.init, self.batches[: cfg.init.iters], self.accelerator, needed,
                                           seq2seq=False)
        torch.save(self.spectra, spectra_path)
        print(f"G: top-{max_rank} triplets of {len(needed)} layers in {time.perf_counter() - start:.0f} s", flush=True)

    def peft(self, r: int):
        peft = copy.deepcopy(self.cfg.peft)
        peft.lora_r = r
        return peft

    def cell(self, r: int, gamma) -> dict:
        cfg, method = self.cfg, init_method(self.cfg.init)
        model = add_lora_adapters(copy.deepcopy(self.base), self.peft(r), "causal", method, cfg.init)
        start = time.perf_counter()
        method.write_adapters(model, cfg.init, self.spectra, 1.0 if gamma == AUTO else gamma)
        search = search_gamma(model, cfg.init.gamma_search, self.batches[cfg.init.iters:], self.accelerator.device) \
            if gamma == AUTO else None
        init_seconds = time.perf_counter() - start
        loss_init = evaluate_loss(model, self.eval_loader, self.accelerator)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(self.train_set, batch_size=cfg.model.per_device_batch_size, shuffle=True,
                            collate_fn=self.collate, generator=shuffle)
        optimizer = build_optimizer(model, cfg.optim, cfg.model)
        scheduler = build_scheduler(optimizer, cfg.model, cfg.model.max_steps)
        model, optimizer, loader = self.accelerator.prepare(model, optimizer, loader)
        start = time.perf_counter()
        history = train(model, optimizer, scheduler, loader, self.accelerator, cfg.model.max_steps,
                        cfg.optim.max_grad_norm, shuffle)
        train_seconds = time.perf_counter() - start
        loss_trained = evaluate_loss(model, self.eval_loader, self.accelerator)
        scaling = next(iter(lora_layers(model).values())).scaling["default"]
        chosen = search["chosen_gamma"] if search else gamma
        return {"r": r, "gamma": gamma, "chosen_gamma": chosen, "eta": scaling / chosen, "lora_scaling": scaling,
                "loss_base": self.base_loss, "loss_init": loss_init, "loss_trained": loss_trained,
                "train_loss_curve": history.loss, "gamma_search": search, "init_seconds": init_seconds,
                "train_seconds": train_seconds}


def heatmap(cells: dict, gammas: list, ranks: list, base_loss: float, path: Path) -> None:
    """Two panels (after init, after training): rows r, columns γ (then auto), colour and label = loss / base."""
    columns = gammas + [AUTO]
    ratios = {key: np.array([[cells[(r, g)][key] / base_loss if (r, g) in cells else np.nan for g in columns]
                             for r in ranks]) for key in ("loss_init", "loss_trained")}
    limit = max(0.1, max(float(np.nanmax(np.abs(np.log2(ratio)))) for ratio in ratios.values()))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    for ax, (key, ratio), title in zip(axes, ratios.items(), ("after init", "after the short training")):
        image = ax.imshow(np.log2(ratio), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        for i, r in enumerate(ranks):
            for j, g in enumerate(columns):
                if (r, g) not in cells:
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=6)
                    continue
                label = f"{ratio[i, j]:.2f}" + (f"\nγ={cells[(r, g)]['chosen_gamma']:.0f}" if g == AUTO else "")
                ax.text(j, i, label, ha="center", va="center", fontsize=6.5)
        ax.set_xticks(range(len(columns)), [f"{g:g}" if g != AUTO else "auto" for g in columns])
        ax.set_yticks(range(len(ranks)), ranks)
        ax.set_xlabel("γ")
        ax.set_ylabel("rank r")
        ax.set_title(f"held-out loss / base ({base_loss:.3f}), {title}", fontsize=9)
    fig.colorbar(image, ax=axes, label="log₂(loss / base)", shrink=0.9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    args = parse_args()
    cfg = compose_config(["experiment=gamma_rank", *args.overrides])
    validate_config(cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "cells.jsonl"
    cells = done_cells(log_path)
    grid = [(r, g) for r in args.ranks for g in [*args.gammas, AUTO]]
    todo = [] if args.plot_only else [key for key in grid if key not in cells]
    study = None
    for r, gamma in todo:
        study = study or Study(cfg, max(args.ranks), args.out / "spectra.pt")
        start = time.perf_counter()
        cell = study.cell(r, gamma)
        cell["seconds"] = time.perf_counter() - start
        cells[(r, gamma)] = cell
        with open(log_path, "a") as f:
            f.write(json.dumps(cell) + "\n")
        print(f"r={r:3d} γ={gamma!s:>5}: loss / base {cell['loss_init'] / cell['loss_base']:.3f} after init, "
              f"{cell['loss_trained'] / cell['loss_base']:.3f} after {cfg.model.max_steps} steps "
              f"({cell['seconds']:.0f} s)", flush=True)
    base_loss = next(iter(cells.values()))["loss_base"]
    heatmap(cells, args.gammas, sorted(args.ranks), base_loss, args.out / "gamma_rank.png")
    done = [r for r in args.ranks if all((r, g) in cells for g in [*args.gammas, AUTO])]
    best = {r: min([*args.gammas, AUTO], key=lambda g: cells[(r, g)]["loss_trained"]) for r in done}
    summary = {"base_loss": base_loss, "gammas": args.gammas, "ranks": args.ranks, "steps": cfg.model.max_steps,
               "cells_done": len([k for k in grid if k in cells]), "cells": len(grid),
               "best_gamma_after_training": best,
               "auto_chosen_gamma": {r: cells[(r, AUTO)]["chosen_gamma"] for r in args.ranks if (r, AUTO) in cells}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
