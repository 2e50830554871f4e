"""Estimators of the one-step full gradient G of the training loss w.r.t. each LoRA target weight,
evaluated at the pretrained weights: `exact` forms G, `sketch` only two thin random sketches of it."""
import contextlib

import torch
from accelerate import Accelerator
from peft import PeftModel

from lora_one.init.sketch import GradientSketch
from lora_one.models.adapters import lora_layers
from lora_one.progress import progress

ESTIMATORS = ("exact", "sketch")


@contextlib.contextmanager
def frozen_pretrained(model: PeftModel):
    """The pretrained model as G sees it: adapters off, dropout off (eval mode), nothing requiring
    grad. Every parameter's requires_grad and the training mode are restored afterwards."""
    saved_requires_grad = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.requires_grad_(False)
    model.eval()
    try:
        with model.disable_adapter():
            yield
    finally:
        for param, flag in saved_requires_grad.items():
            param.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def activations_require_grad(model: PeftModel):
    """Make the input embeddings' output require grad, so backprop runs through a network whose
    weights all are frozen, computing activation gradients only (the cost floor of any gradient)."""
    hook = model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output.requires_grad_(True))
    try:
        yield
    finally:
        hook.remove()


def backpropagate(model: PeftModel, batches: list[dict], accelerator: Accelerator, desc: str) -> None:
    """Backward of L_k / K for this process's share of the K = len(batches) micro-batches (every
    world_size-th one), so the gradients summed over processes are those of the mean loss."""
    my_batches = batches[accelerator.process_index :: accelerator.num_processes]
    for batch in progress(my_batches, desc=desc, unit="batch", show=accelerator.is_main_process):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        (model(**batch).loss / len(batches)).backward()


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


def sketched_gradient(model: PeftModel, batches: list[dict], accelerator: Accelerator, ranks: dict[str, int],
                      oversampling: int, seed: int) -> dict[str, GradientSketch]:
    """Sketches Y = GΩ, Z = ΨᵀG of the same G as `exact_full_gradient`, for every LoRA target weight,
    with room for its top `ranks[name]` directions plus `oversampling` (see init/sketch.py).

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
