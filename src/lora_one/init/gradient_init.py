"""What the one-step full-gradient inits (LoRA-One, LoRA-GA) share: estimate the top singular
triplets of each target weight's gradient G at the pretrained weights, turn them into the
method's factors, write them into the adapters; plus the artifacts that let a run be exported
and resumed when the init moved the base weight."""
import logging
import os

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from lora_one import ConfigError
from lora_one.init.dora import rebuild_magnitude
from lora_one.init.estimators import ESTIMATORS
from lora_one.init.gamma_search import AUTO, check_search_config, search_gamma
from lora_one.init.method import InitMethod, InitReport
from lora_one.init.spectral import SCALES, SVD_METHODS, scale_factors
from lora_one.manifest import write_manifest
from lora_one.models.adapters import ADAPTER, lora_layers

log = logging.getLogger(__name__)


class GradientInit(InitMethod):
    """A spectral init from the one-step full gradient. Subclasses give `singular_directions`,
    `factors(U, S, Vh, r)` → (B₀, A₀) before scaling, and the `stable` scale's `stable_factor(m, γ)`."""

    needs_batches = True

    def factors(self, U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, r: int):
        raise NotImplementedError

    def stable_factor(self, m: int, gamma: float) -> float:
        raise NotImplementedError

    def check_config(self, cfg: DictConfig) -> None:
        if cfg.scale not in SCALES:
            raise ConfigError(f"init.scale '{cfg.scale}' is unknown; use one of {SCALES}")
        if cfg.stable_gamma == AUTO:
            if self.moves_base or cfg.scale != "stable":
                raise ConfigError(f"init.stable_gamma=auto needs init.scale=stable and an init that keeps the base "
                                  f"({self.name} with scale={cfg.scale}: the initial loss does not depend on γ); "
                                  "give a number")
            check_search_config(cfg.gamma_search)
        if cfg.estimator not in ESTIMATORS:
            raise ConfigError(f"init.estimator '{cfg.estimator}' is unknown; use one of {tuple(ESTIMATORS)}")
        if cfg.svd not in SVD_METHODS:
            raise ConfigError(f"init.svd '{cfg.svd}' is unknown; use one of {SVD_METHODS}")
        if cfg.checkpointing not in ("auto", True, False):
            raise ConfigError(f"init.checkpointing must be auto, true or false (got {cfg.checkpointing})")

    def batch_count(self, cfg: DictConfig) -> int:
        """`iters` micro-batches for G, then, with γ=auto, `gamma_search.batches` held out for the search."""
        return cfg.iters + (cfg.gamma_search.batches if cfg.stable_gamma == AUTO else 0)

    def initialise(self, model, cfg, batches, accelerator, seq2seq) -> InitReport:
        needed = {name: self.singular_directions(layer.r[ADAPTER]) for name, layer in lora_layers(model).items()}
        grads, spectra = gradient_spectra(model, cfg, batches[: cfg.iters], accelerator, needed, seq2seq)
        if cfg.stable_gamma != AUTO:
            return InitReport(layer_stats=self.write_adapters(model, cfg, spectra), gradients=grads)
        stats = self.write_adapters(model, cfg, spectra, 1.0)
        search = search_gamma(model, cfg.gamma_search, batches[cfg.iters :], accelerator.device,
                              accelerator.is_main_process)
        return InitReport(layer_stats=stats, gradients=grads, extra={"gamma_search": search})

    def write_adapters(self, model: PeftModel, cfg: DictConfig, spectra: dict,
                       gamma: float | None = None) -> dict[str, dict]:
        """Set every adapter from its layer's (U, S, Vh, ‖G‖²_F) at γ (default `init.stable_gamma`);
        returns the per-layer statistics."""
        gamma = cfg.stable_gamma if gamma is None else gamma
        stats = {}
        for name, layer in lora_layers(model).items():
            r = layer.r[ADAPTER]
            U, S, Vh, frobenius_sq = spectra[name]
            B, A = scale_factors(*self.factors(U, S, Vh, r), cfg.scale, self.stable_factor(U.shape[0], gamma),
                                 layer.scaling[ADAPTER])
            write_factors(layer, B, A, offset_base=self.moves_base)
            rebuild_magnitude(layer)  # DoRA: m = ‖W + s·B₀A₀‖, so the init's model is the one DoRA starts from
            stats[name] = spectrum_stats(S, r, frobenius_sq)
        return stats


def spectrum_stats(S: torch.Tensor, r: int, frobenius_sq: float) -> dict:
    """σ₁, σ_r/σ₁ and the share of ‖G‖²_F in G's top-r directions."""
    return {"sigma1": S[0].item(), "sigma_r_over_sigma1": (S[r - 1] / S[0]).item(),
            "top_r_energy": min(1.0, S[:r].square().sum().item() / max(frobenius_sq, 1e-30))}


def gradient_spectra(model: PeftModel, cfg: DictConfig, batches: list[dict], accelerator: Accelerator,
                     needed: dict[str, int], seq2seq: bool):
    """(G per layer or None, {layer: (U, S, Vh, ‖G‖²_F)}) with the `needed[layer]` top singular triplets,
    by the estimator `init.estimator` names (init/estimators/)."""
    return ESTIMATORS[cfg.estimator](model, cfg, batches, accelerator, needed, seq2seq)


@torch.no_grad()
def write_factors(layer, B: torch.Tensor, A: torch.Tensor, offset_base: bool) -> None:
    """Copy B₀, A₀ into the layer's adapter in its dtype; with `offset_base`, W ← W − s·B₀A₀ (computed
    in fp32 from the dtype-rounded factors) so that W + s·B₀A₀ is the pretrained weight again."""
    lora_A, lora_B = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    lora_A.copy_(A.to(lora_A.dtype))
    lora_B.copy_(B.to(lora_B.dtype))
    if offset_base:
        weight = layer.get_base_layer().weight
        offset = layer.scaling[ADAPTER] * (lora_B.float() @ lora_A.float())
        weight.copy_((weight.float() - offset).to(weight.dtype))


@torch.no_grad()
def redo_base_offset(model: PeftModel, initial_adapter: str) -> None:
    """Load the initial adapter (B₀, A₀) and set every adapted base weight to W₀ − s·B₀A₀, as the init
    did (`write_factors`): rebuilds, for a resumed run, the base of an init that moved it (LoRA-GA, PiSSA)."""
    set_peft_model_state_dict(model, load_file(os.path.join(initial_adapter, "adapter_model.safetensors")))
    for layer in lora_layers(model).values():
        write_factors(layer, layer.lora_B[ADAPTER].weight.clone(), layer.lora_A[ADAPTER].weight.clone(),
                      offset_base=True)


def save_init_artifacts(out_dir: str, grads: dict[str, torch.Tensor] | None, batches: list[dict],
                        model: PeftModel) -> None:
    """init/gradients.safetensors (G per target weight), init/batches.pt (the exact batches G used)
    and init/adapter/ (the adapter before any training step). The sketch estimator never forms G
    (`grads` is None): then only the batches and the adapter are written."""
    os.makedirs(out_dir, exist_ok=True)
    if grads is None:
        log.warning("this init formed no G to keep: writing the batches and the adapter, no gradients.safetensors")
    else:
        save_file({k: v.contiguous().cpu() for k, v in grads.items()}, os.path.join(out_dir, "gradients.safetensors"))
    torch.save(batches, os.path.join(out_dir, "batches.pt"))
    save_initial_adapter(model, os.path.join(out_dir, "adapter"))


def save_initial_adapter(model: PeftModel, path: str) -> None:
    """Save the adapter as initialised, marked `init_lora_weights=True` so PEFT can later convert a
    trained adapter whose init moved the base weights (LoRA-GA, PiSSA) into a plain LoRA adapter
    (`save_pretrained(..., path_initial_model_for_weight_conversion=path)`), with a checksum manifest:
    a resume rebuilds the base from it, so a damaged copy must be refused, not trained on."""
    config = model.peft_config[ADAPTER]
    original, config.init_lora_weights = config.init_lora_weights, True
    try:
        model.save_pretrained(path)
    finally:
        config.init_lora_weights = original
    write_manifest(path, ["adapter_model.safetensors"])  # what a resume reads; PEFT rewrites the config at each export
