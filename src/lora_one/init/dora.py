"""DoRA-One: a spectral init under DoRA's weight decomposition.

DoRA (Liu et al., ICML 2024) adapts a weight as  W' = m ⊙ (W + s·BA) / ‖W + s·BA‖,  the norm taken
per output row (PEFT calls it the column norm of Wᵀ), m a trainable magnitude vector. PEFT sets
m = ‖W + s·BA‖ while wrapping, when B = 0, so that W' = W. A gradient init writes B₀, A₀ (and, for
LoRA-GA, offsets W) afterwards; rebuilding m from the written weights makes the ratio 1 again, so
W' = W + s·B₀A₀: the initial model is exactly the one the init defines (for LoRA-One, the spectral
step W − (s/(γσ₁))[G]_r), and DoRA then trains magnitude and direction from there."""
import os

import torch
from peft import PeftModel, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file

from lora_one.models.adapters import ADAPTER


def uses_dora(layer: LoraLayer) -> bool:
    return ADAPTER in layer.lora_magnitude_vector


@torch.no_grad()
def rebuild_magnitude(layer: LoraLayer) -> None:
    """m ← ‖W + s·BA‖ (row norms) from the layer's current weights, by PEFT's own DoRA layer
    (`update_layer` → `get_weight_norm`, which also handles dequantisation and fan_in_fan_out).
    A no-op for a plain LoRA layer."""
    if uses_dora(layer):
        layer.lora_magnitude_vector[ADAPTER].update_layer(
            base_layer=layer.get_base_layer(), lora_A=layer.lora_A[ADAPTER].weight,
            lora_B=layer.lora_B[ADAPTER].weight, scaling=layer.scaling[ADAPTER])


def restore_exported_magnitudes(model: PeftModel, adapter_dir: str) -> None:
    """Put m back into an adapter that `save_pretrained(..., path_initial_model_for_weight_conversion=…)`
    converted (inits that moved the base: LoRA-GA, PiSSA). PEFT 0.21's conversion keeps only lora_A/B,
    so a reload would rebuild m = ‖W + ΔW‖ and lose the trained magnitude; the direction needs no
    change, since W + ΔW = W_res + s·BA. A no-op without DoRA."""
    magnitudes = {k: v.contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()
                  if "lora_magnitude_vector" in k}
    if magnitudes:
        path = os.path.join(adapter_dir, SAFETENSORS_WEIGHTS_NAME)
        save_file({**load_file(path), **magnitudes}, path, metadata={"format": "pt"})
