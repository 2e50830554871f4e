"""`exact`: every layer's G accumulated over all micro-batches first, then factorised (the reference;
one m×n fp32 buffer per layer)."""
import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from peft import PeftModel

from lora_one.init.estimators.shared import backpropagate, frozen_pretrained, spectrum
from lora_one.models.adapters import lora_layers
from lora_one.progress import progress


def exact_full_gradient(model: PeftModel, batches: list[dict], accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """G = (1/K) Σ_k ∇_W L(batch_k) for the K = len(batches) micro-batches, where L is a batch's mean
    token loss, for every LoRA target weight W (keyed by its base-model name), in fp32.

    Only target weights require grad; each backward's gradient is folded into an fp32 buffer by a
    post-accumulate hook and freed, so no `.grad` outlives one micro-batch. With several processes
    the sums are all-reduced, so every process ends with the same G. Memory: one m×n buffer per layer."""
    weights = {name: layer.get_base_layer().weight for name, layer in lora_layers(model).items()}
    grads = {name: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for name, w in weights.items()}

    def fold(param, buffer):
        buffer.add_(param.grad.float())
        param.grad = None

    hooks = []
    with frozen_pretrained(model):
        try:
            for name, weight in weights.items():
                weight.requires_grad_(True)
                hooks.append(weight.register_post_accumulate_grad_hook(lambda p, buffer=grads[name]: fold(p, buffer)))
            backpropagate(model, batches, accelerator, "one-step full gradient")
        finally:
            for hook in hooks:
                hook.remove()
    if accelerator.num_processes > 1:
        grads = accelerator.reduce(grads, reduction="sum")
    return grads


def estimate(model: PeftModel, cfg: DictConfig, batches: list[dict], accelerator: Accelerator,
             needed: dict[str, int], seq2seq: bool):
    """(G per layer, {layer: (U, S, Vh, ‖G‖²_F)}); the model's loss already knows `seq2seq`."""
    grads = exact_full_gradient(model, batches, accelerator)
    layers = progress(grads.items(), desc="factorising G", unit="layer", show=accelerator.is_main_process)
    return grads, {name: spectrum(G, needed[name], cfg) for name, G in layers}
