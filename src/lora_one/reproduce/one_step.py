"""The title claim, measured: how far does ONE step along the full gradient G lower the held-out
loss, and how much of that does its best rank-r truncation (the step LoRA-One's init writes) keep?

One G (the framework's exact one-step gradient of every target weight, from the first
init.bsz × init.iters training rows) and one set of held-out rows (`load_splits`, disjoint from
them) serve every measurement of the held-out loss:

- the base model;
- W − η·G on every target weight (the full step) and W − η·[G]_r (its best rank-r approximation,
  Eckart–Young) for each r, over a log-spaced grid of η. LoRA-One's init is W − (s/(γσ₁))·[G]_r:
  the same direction with a per-layer η (σ₁ is each layer's top singular value of G);
- one plain gradient-descent step at learning rate λ on the adapter factors (B, A), from the
  LoRA-GA init (which leaves the model's output unchanged) and from LoRA-One's, the gradient taken
  on G's rows.

Each curve's minimum over its grid is kept interior when it can be: where it lies on an end, the
grid is extended past that end, one grid ratio at a time. The fraction of the full step's best
decrease that a curve keeps is (L_base − min L_curve) / (L_base − min L_full), and, for the
rank-r steps, also at the full step's best η.
"""
import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from peft import PeftModel  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lora_one import ConfigError  # noqa: E402
from lora_one.data import encode_rows, load_splits, make_batches, make_collator  # noqa: E402
from lora_one.data.encoding import IGNORE_INDEX  # noqa: E402
from lora_one.init import METHODS, init_method  # noqa: E402
from lora_one.init.estimators.shared import backpropagate  # noqa: E402
from lora_one.init.gamma_search import AUTO  # noqa: E402
from lora_one.init.gradient_init import gradient_spectra  # noqa: E402
from lora_one.models import add_lora_adapters, load_model, load_tokenizer, lora_layers  # noqa: E402
from lora_one.models.adapters import ADAPTER  # noqa: E402
from lora_one.train import evaluate_loss  # noqa: E402

# The default setting: SmolLM2-135M with the study's q_proj/v_proj adapters (LoRA r=8) on SST-2 rows of
# at most 64 tokens. G averages 16 training rows (the study's inits use 4: more rows make the measured
# held-out gain that of the gradient's direction, not of four examples' noise; one backward either way).
# 32 held-out rows (the study's tuning uses 16): every curve is measured on the same rows, so their noise
# largely cancels between curves, and a pass costs ≈ 8 s on a free core (≈ 30 s on this shared one);
# scripts/one_step.py's default grids take ≈ 40 passes.
DEFAULT_OVERRIDES = ("model=smollm2_135m", "peft=qv", "dataset=sst2", "dataset.path=${paths.data_dir}/glue/SST-2",
                     "dataset.max_train_samples=512", "dataset.eval_size=32", "model.max_length=64",
                     "init=gradient", "init.bsz=16", "init.iters=1")
ADAPTER_INITS = ("LoRA-GA", "LoRA-One")
Progress = Callable[[str], None]


class HeldOutLoss:
    """`evaluate_loss`'s number, the mean over the held-out loader's batches (`loader_batch_size` rows
    in order) of each batch's mean token loss, in fewer FLOPs: the rows are regrouped by length
    (little padding) into batches of about `tokens` tokens, and the output head runs only where a
    label is. Per-row sums of token losses are then averaged per loader batch, so the value is the
    same up to rounding (right padding changes no real token's computation). Causal LMs only."""

    def __init__(self, rows: list[dict], collate, loader_batch_size: int, tokens: int = 1024):
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
        self.groups, group = [], []
        for i in order:
            if group and (len(group) + 1) * len(rows[i]["input_ids"]) > tokens:
                self.groups.append((torch.tensor(group), dict(collate([rows[j] for j in group]))))
                group = []
            group.append(i)
        self.groups.append((torch.tensor(group), dict(collate([rows[j] for j in group]))))
        self.loader_batch = torch.arange(len(rows)) // loader_batch_size
        self.passes, self.seconds = 0, 0.0
        self.planned = 0  # passes the caller expects, for `pace`

    def pace(self) -> str:
        per_pass = self.seconds / max(self.passes, 1)
        left = max(self.planned - self.passes, 0) * per_pass
        return f"pass {self.passes}/{self.planned}, {per_pass:.1f} s each, ≈ {left / 60:.0f} min left"

    @torch.no_grad()
    def __call__(self, model) -> float:
        start = time.perf_counter()
        model.eval()
        causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
        decoder, head = causal_lm.get_decoder(), causal_lm.get_output_embeddings()
        device = head.weight.device
        sums = torch.zeros(len(self.loader_batch), dtype=torch.float64)
        counts = torch.zeros(len(self.loader_batch), dtype=torch.float64)
        for rows, batch in self.groups:
            hidden = decoder(input_ids=batch["input_ids"].to(device),
                             attention_mask=batch["attention_mask"].to(device)).last_hidden_state
            targets = batch["labels"][:, 1:].to(device)  # position t predicts token t + 1
            labelled = targets != IGNORE_INDEX
            losses = F.cross_entropy(head(hidden[:, :-1][labelled]).float(), targets[labelled], reduction="none")
            row_of_token = rows.to(device)[:, None].expand_as(targets)[labelled].cpu()
            sums.index_add_(0, row_of_token, losses.double().cpu())
            counts.index_add_(0, row_of_token, torch.ones_like(losses, dtype=torch.float64).cpu())
        batches = int(self.loader_batch.max()) + 1
        per_batch = torch.zeros(batches, dtype=torch.float64).index_add_(0, self.loader_batch, sums) / \
            torch.zeros(batches, dtype=torch.float64).index_add_(0, self.loader_batch, counts)
        self.passes += 1
        self.seconds += time.perf_counter() - start
        return per_batch.mean().item()


class StepCurve:
    """The held-out loss after `params ← params − η·directions` (every tensor at once), as a function of
    η: each point is evaluated once, on demand, and the parameters are restored after it."""

    def __init__(self, label: str, model, params: dict[str, torch.Tensor], directions: dict[str, torch.Tensor],
                 held_out: HeldOutLoss, progress: Progress, symbol: str = "η"):
        self.label, self.model, self.params, self.directions, self.symbol = label, model, params, directions, symbol
        self.originals = {name: p.detach().clone() for name, p in params.items()}
        self.held_out, self.progress = held_out, progress
        self.points: dict[float, float] = {}

    @torch.no_grad()
    def at(self, eta: float) -> float:
        if eta not in self.points:
            try:
                for name, p in self.params.items():
                    p.copy_(self.originals[name] - eta * self.directions[name].to(p.dtype))
                self.points[eta] = self.held_out(self.model)
            finally:
                for name, p in self.params.items():
                    p.copy_(self.originals[name])
            self.progress(f"{self.label} {self.symbol}={eta:.3g}: held-out loss {self.points[eta]:.4f} "
                          f"({self.held_out.pace()})")
        return self.points[eta]

    def scan(self, grid: list[float], extensions: int) -> None:
        """Evaluate every η of the grid, then, while the minimum lies on the grid's first or last
        positive η, one more point past it (the grid's ratio), at most `extensions` times."""
        for eta in grid:
            self.at(eta)
        ratio = grid[1] / grid[0]
        for _ in range(extensions):
            positive = sorted(eta for eta in self.points if eta > 0)
            best = self.best()["eta"]
            if best == positive[-1]:
                self.at(best * ratio)
            elif best <= positive[0]:  # the smallest step (or none, η = 0) is best: look closer to 0
                self.at(positive[0] / ratio)
            else:
                return

    def best(self) -> dict:
        eta = min(self.points, key=self.points.get)
        positive = sorted(e for e in self.points if e > 0)
        return {"eta": eta, "loss": self.points[eta], "inside_grid": positive[0] < eta < positive[-1]}

    def summary(self) -> dict:
        etas = sorted(self.points)
        return {"eta": etas, "loss": [self.points[e] for e in etas], "best": self.best()}


def one_step_gradient(base, cfg: DictConfig, batches: list[dict], accelerator: Accelerator):
    """({weight name: G}, {weight name: (U, S, Vh, ‖G‖²_F)}): the framework's exact estimator of G at
    the base weights (a wrapped copy of `base` whose adapters it switches off) and G's full SVD."""
    init_cfg = OmegaConf.merge(cfg.init, {"estimator": "exact", "svd": "full"})
    wrapped = add_lora_adapters(copy.deepcopy(base), cfg.peft, "causal", METHODS["LoRA"], init_cfg)
    full_rank = {name: min(layer.get_base_layer().weight.shape) for name, layer in lora_layers(wrapped).items()}
    return gradient_spectra(wrapped, init_cfg, batches, accelerator, full_rank, seq2seq=False)


def truncated(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, r: int) -> torch.Tensor:
    """[G]_r = U_r diag(S_r) V_rᵀ, the best rank-r approximation of G (r above the rank: G itself)."""
    return (U[:, :r] * S[:r]) @ Vh[:r]


def spectrum_summary(spectra: dict, ranks: list[int]) -> dict:
    """Per layer σ₁, ‖G‖²_F and the share of ‖G‖²_F in the top r directions; per r the mean, min and
    max of that share over layers, and the pooled share Σ_ℓ‖[G_ℓ]_r‖² / Σ_ℓ‖G_ℓ‖²."""
    per_layer = {name: {"sigma1": S[0].item(), "frobenius_sq": fro_sq,
                        "top_r_energy": {str(r): S[:r].square().sum().item() / fro_sq for r in ranks}}
                 for name, (_, S, _, fro_sq) in spectra.items()}
    total = sum(layer["frobenius_sq"] for layer in per_layer.values())
    summary = {}
    for r in ranks:
        shares = [layer["top_r_energy"][str(r)] for layer in per_layer.values()]
        pooled = sum(layer["top_r_energy"][str(r)] * layer["frobenius_sq"] for layer in per_layer.values()) / total
        summary[str(r)] = {"mean": float(np.mean(shares)), "min": min(shares), "max": max(shares), "pooled": pooled}
    return {"per_layer": per_layer, "top_r_energy": summary}


def adapter_step_curve(direction: str, base, cfg: DictConfig, spectra: dict, batches: list[dict],
                       accelerator: Accelerator, held_out: HeldOutLoss, progress: Progress):
    """A copy of `base` with rank-`peft.lora_r` adapters that the `direction` init (LoRA-GA, LoRA-One)
    wrote from G's SVD, the gradient of (B, A) there on G's rows, and the StepCurve of one plain
    gradient-descent step (B, A) ← (B, A) − λ·∇ at learning rate λ; plus what the init was."""
    init_cfg = OmegaConf.merge(cfg.init, {"direction": direction})
    method = init_method(init_cfg)
    method.check_config(init_cfg)
    if init_cfg.stable_gamma == AUTO:
        raise ConfigError("the one-step study writes each init at one γ: give init.stable_gamma a number, not auto")
    model = add_lora_adapters(copy.deepcopy(base), cfg.peft, "causal", method, init_cfg)
    method.write_adapters(model, init_cfg, spectra)
    model.eval()
    factors = {f"{name}:{part}": getattr(layer, part)[ADAPTER].weight
               for name, layer in lora_layers(model).items() for part in ("lora_B", "lora_A")}
    backpropagate(model, batches, accelerator, f"gradient on (B, A) at the {direction} init")
    gradients = {name: p.grad.detach().clone() for name, p in factors.items()}
    model.zero_grad(set_to_none=True)
    layer = next(iter(lora_layers(model).values()))
    info = {"rank": int(cfg.peft.lora_r), "lora_scaling": layer.scaling[ADAPTER], "scale": init_cfg.scale,
            "stable_gamma": init_cfg.stable_gamma, "moves_base": method.moves_base}
    if direction == "LoRA-GA":
        info["eta_per_lr"] = lora_ga_eta_per_lr(model)
    return StepCurve(f"{direction} step on (B, A)", model, factors, gradients, held_out, progress, "λ"), info


def lora_ga_eta_per_lr(model: PeftModel) -> dict[str, float]:
    """LoRA-GA's A₀ = c·V_rᵀ and B₀ = c·U_{r:2r} have orthogonal rows / columns of length c, so a GD step
    at learning rate λ moves W by −λ·s²c²·[G]_{2r} to first order: s²c² = s²‖A₀‖²_F / r per module
    kind (c depends on the out features through the stable scale)."""
    factors = {}
    for name, layer in lora_layers(model).items():
        A = layer.lora_A[ADAPTER].weight
        kind = name.rsplit(".", 2)[-2]
        factors[kind] = layer.scaling[ADAPTER] ** 2 * A.square().sum().item() / A.shape[0]
    return factors


def fraction(base_loss: float, loss: float, full_loss: float) -> float:
    """The share of the full step's decrease of the held-out loss that `loss` keeps."""
    return (base_loss - loss) / (base_loss - full_loss)


def run_one_step(cfg: DictConfig, ranks: list[int], eta_grid: list[float], lr_grid: list[float],
                 adapter_inits: list[str] = ADAPTER_INITS, extensions: int = 2,
                 progress: Progress = print) -> dict:
    """Every measurement of the module docstring on the run config `cfg` (composed as run_exp's);
    returns the results dict (JSON-ready)."""
    if cfg.model.type != "causal":
        raise ConfigError(f"the one-step study measures causal LMs (model.type={cfg.model.type})")
    start = time.perf_counter()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    train_rows, eval_rows = load_splits(cfg.dataset, cfg.seed)
    eval_set = encode_rows(tokenizer, eval_rows, cfg.model.max_length, False)
    collate = make_collator(tokenizer)
    held_out = HeldOutLoss(eval_set, collate, cfg.model.per_device_batch_size)
    batches = make_batches(tokenizer, encode_rows(tokenizer, train_rows, cfg.init.max_length, False),
                           cfg.init.bsz, cfg.init.iters)  # run_exp's G rows: the first bsz × iters of train
    base = load_model(cfg.model, tokenizer, cfg.cache_dir).to(accelerator.device).eval()

    reference = evaluate_loss(base, DataLoader(eval_set, batch_size=cfg.model.per_device_batch_size,
                                               collate_fn=collate), accelerator)
    base_loss = held_out(base)
    progress(f"base model: held-out loss {base_loss:.4f} ({held_out.seconds:.1f} s per pass; evaluate_loss: "
             f"{reference:.4f})")
    if not math.isclose(base_loss, reference, rel_tol=1e-4, abs_tol=1e-5):
        raise RuntimeError(f"the fast held-out loss {base_loss} differs from evaluate_loss's {reference}")

    gradient_start = time.perf_counter()
    grads, spectra = one_step_gradient(base, cfg, batches, accelerator)
    gradient_seconds = time.perf_counter() - gradient_start
    held_out.planned = held_out.passes + len(eta_grid) * (1 + len(ranks)) + (len(lr_grid) + 1) * len(adapter_inits)
    progress(f"G of {len(grads)} target weights from {cfg.init.bsz * cfg.init.iters} training rows and its SVD: "
             f"{gradient_seconds:.0f} s; {held_out.planned} held-out passes planned, more if a minimum lies on a "
             "grid's end")

    targets = {name: p for name, p in base.named_parameters() if name in grads}
    full = StepCurve("full step", base, targets, grads, held_out, progress)
    full.scan(eta_grid, extensions)
    common_eta = full.best()["eta"]
    weight_steps = {"full": {"rank": None, **full.summary(), "loss_at_common_eta": full.at(common_eta)}}
    for r in ranks:
        step = StepCurve(f"rank-{r} step", base, targets, {n: truncated(*spectra[n][:3], r) for n in grads},
                         held_out, progress)
        step.scan(eta_grid, extensions)
        weight_steps[f"rank {r}"] = {"rank": r, **step.summary(), "loss_at_common_eta": step.at(common_eta)}
    best_full = weight_steps["full"]["best"]["loss"]  # also the full step's loss at the common η
    for curve in weight_steps.values():
        curve["fraction_best"] = fraction(base_loss, curve["best"]["loss"], best_full)
        curve["fraction_at_common_eta"] = fraction(base_loss, curve["loss_at_common_eta"], best_full)

    adapter_steps = {}
    for direction in adapter_inits:
        step, info = adapter_step_curve(direction, base, cfg, spectra, batches, accelerator, held_out, progress)
        init_loss = step.at(0.0)
        progress(f"{direction} init: held-out loss {init_loss:.6f}, base {base_loss:.6f} (difference "
                 f"{init_loss - base_loss:+.2e})")
        step.scan(lr_grid, extensions)
        summary = step.summary()
        adapter_steps[direction] = {**info, "init_loss": init_loss, "lr": summary.pop("eta"), **summary,
                                    "fraction_best": fraction(base_loss, summary["best"]["loss"], best_full)}

    return {
        "base_loss": base_loss,
        "base_loss_evaluate_loss": reference,
        "ranks": list(ranks),
        "eta_grid": list(eta_grid),
        "lr_grid": list(lr_grid),
        "common_eta": common_eta,
        "weight_steps": weight_steps,
        "adapter_steps": adapter_steps,
        "gradient": {"rows": cfg.init.bsz * cfg.init.iters, "layers": len(grads), "seconds": gradient_seconds,
                     **spectrum_summary(spectra, ranks)},
        "held_out": {"rows": len(eval_set), "tokens": sum(len(row["input_ids"]) for row in eval_set),
                     "labelled_tokens": sum(sum(t != IGNORE_INDEX for t in row["labels"]) for row in eval_set),
                     "passes": held_out.passes, "seconds_per_pass": held_out.seconds / held_out.passes},
        "seconds": time.perf_counter() - start,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def plot_one_step(results: dict, path: Path) -> None:
    """Left: held-out loss vs η of the full step and each rank-r step (the minimum marked), the base as
    a line. Right: vs the learning rate λ, one GD step on (B, A) from each adapter init."""
    base = results["base_loss"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for name, curve in results["weight_steps"].items():
        etas, losses = zip(*[(e, l) for e, l in zip(curve["eta"], curve["loss"]) if e > 0])
        line, = left.plot(etas, losses, marker=".", lw=2.2 if name == "full" else 1.4,
                          color="black" if name == "full" else None, zorder=3 if name == "full" else 2, label=name)
        left.plot(curve["best"]["eta"], curve["best"]["loss"], "o", ms=7, mfc="none", color=line.get_color())
    left.set_xlabel("step size η   (W − η·G, W − η·[G]_r on every target weight)")
    left.set_title("one step along the full gradient G and its rank-r truncations", fontsize=9)
    for name, curve in results["adapter_steps"].items():
        lrs, losses = zip(*[(e, l) for e, l in zip(curve["lr"], curve["loss"]) if e > 0])
        line, = right.plot(lrs, losses, marker=".", label=f"{name} init (r={curve['rank']}) + one GD step")
        right.axhline(curve["init_loss"], color=line.get_color(), ls=":", lw=1, label=f"{name} init")
    right.set_xlabel("learning rate λ   ((B, A) ← (B, A) − λ·∇)")
    right.set_title("one plain gradient step on the adapters from a gradient init", fontsize=9)
    full_best = results["weight_steps"]["full"]["best"]["loss"]
    lowest = min(curve["best"]["loss"] for group in ("weight_steps", "adapter_steps")
                 for curve in results[group].values())
    for ax in (left, right):
        ax.axhline(base, color="grey", ls="--", lw=1, label="base model")
        ax.axhline(full_best, color="black", ls=":", lw=1, label="best full step" if ax is right else None)
        ax.set_xscale("log")
        ax.set_ylim(lowest - 0.1 * (base - lowest), base + 0.5 * (base - lowest))  # steps that overshoot: clipped
        ax.set_ylabel("held-out loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def one_step_markdown(results: dict, figure_path: str) -> str:
    """A markdown section from the results JSON: what was measured, a table of each curve's best
    step, the fractions of the full step's decrease, and the figure."""
    base, common = results["base_loss"], results["common_eta"]
    energy = results["gradient"]["top_r_energy"]
    cfg = results["config"]
    rows = ["| step | best η (λ) | held-out loss at it | share of the full step's decrease | "
            f"loss at η = {common:.3g} | share at η = {common:.3g} | ‖[G]_r‖²/‖G‖² (pooled; layer mean) |",
            "|---|---|---|---|---|---|---|",
            f"| none (base model) | – | {base:.4f} | 0 | {base:.4f} | 0 | – |"]
    for name, curve in results["weight_steps"].items():
        best = curve["best"]
        share = "1" if curve["rank"] is None else \
            f"{energy[str(curve['rank'])]['pooled']:.3f}; {energy[str(curve['rank'])]['mean']:.3f}"
        rows.append(f"| W − η·{'G' if curve['rank'] is None else '[G]_' + str(curve['rank'])} "
                    f"| {best['eta']:.3g}{'' if best['inside_grid'] else ' (grid end)'} | {best['loss']:.4f} | "
                    f"{curve['fraction_best']:.3f} | {curve['loss_at_common_eta']:.4f} | "
                    f"{curve['fraction_at_common_eta']:.3f} | {share} |")
    for name, curve in results["adapter_steps"].items():
        best = curve["best"]
        rows.append(f"| {name} init (r={curve['rank']}), loss {curve['init_loss']:.4f}, + one GD step on (B, A) | "
                    f"λ = {best['eta']:.3g}{'' if best['inside_grid'] else ' (grid end)'} | {best['loss']:.4f} | "
                    f"{curve['fraction_best']:.3f} | – | – | – |")
    return "\n".join([
        "## One step of the full gradient",
        "",
        f"Model {cfg['model']['name']}, adapters on {', '.join(cfg['peft']['target_modules'])}; G is the exact "
        f"one-step gradient of those {results['gradient']['layers']} weights on {results['gradient']['rows']} "
        f"training rows of {cfg['dataset']['name']}; every loss is the held-out loss on "
        f"{results['held_out']['rows']} other rows (the run's eval loss). The rank-r step W − η·[G]_r is the "
        "direction LoRA-One's init writes (there with a per-layer η = s/(γσ₁)).",
        "",
        *rows,
        "",
        *weight_step_sentences(results),
        *adapter_step_sentences(results),
        "",
        f"![held-out loss after one step]({figure_path})",
        "",
        f"{results['held_out']['passes']} held-out passes, {results['held_out']['seconds_per_pass']:.1f} s each; "
        f"{results['seconds'] / 60:.1f} min in all.",
        "",
    ])


def weight_step_sentences(results: dict) -> list[str]:
    base, full = results["base_loss"], results["weight_steps"]["full"]
    ranked = [c for c in results["weight_steps"].values() if c["rank"] is not None]
    fractions = ", ".join(f"r = {c['rank']}: {c['fraction_best']:.1%}" for c in ranked)
    at_common = ", ".join(f"{c['fraction_at_common_eta']:.1%}" for c in ranked)
    outside = [name for name, c in results["weight_steps"].items() if not c["best"]["inside_grid"]]
    return [f"The best full step (η = {full['best']['eta']:.3g}) lowers the held-out loss from {base:.4f} to "
            f"{full['best']['loss']:.4f}. At each one's own best η, the rank-r steps keep {fractions} of that "
            f"decrease; at the full step's η they keep {at_common}."
            + (f" The minimum of {', '.join(outside)} lies on its grid's end: the true minimum may be lower."
               if outside else "")]


def adapter_step_sentences(results: dict) -> list[str]:
    sentences = []
    for name, curve in results["adapter_steps"].items():
        text = (f"{name} (r = {curve['rank']}, {curve['scale']} scale, γ = {curve['stable_gamma']:g}) starts at "
                f"held-out loss {curve['init_loss']:.4f} ({curve['init_loss'] - results['base_loss']:+.1e} from the "
                f"base{': its init keeps the output' if curve['moves_base'] else ''}); one plain GD step on its "
                f"factors reaches {curve['best']['loss']:.4f} at λ = {curve['best']['eta']:.3g}, "
                f"{curve['fraction_best']:.1%} of the full step's decrease.")
        if "eta_per_lr" in curve:
            factors = ", ".join(f"{kind} {value:.3g}" for kind, value in curve["eta_per_lr"].items())
            text += (f" To first order that step is W − λ·s²c²·[G]_{2 * curve['rank']} with s²c² = {factors}: "
                     f"compare it with the rank-{2 * curve['rank']} step.")
        sentences.append(text)
    return sentences
