"""PEFT's own initialisations, set while PEFT wraps the model: nothing to do afterwards."""
from lora_one.init.method import InitMethod, register


@register
class LoRA(InitMethod):
    """PEFT's default: Kaiming-uniform A, zero B (the adapter starts as a no-op)."""

    name = "LoRA"


@register
class Gaussian(InitMethod):
    """PEFT's gaussian init: A ~ N(0, 1/r), zero B."""

    name = "gaussian"

    def lora_config_kwargs(self, cfg):
        return {"init_lora_weights": "gaussian"}


@register
class PiSSA(InitMethod):
    """PiSSA (Meng et al., 2024): adapters from the top-r SVD of the pretrained weight, which PEFT
    removes from the base (W_res = W − s·B₀A₀); `init.niter` > 0 uses PEFT's randomized SVD."""

    name = "PiSSA"
    moves_base = True

    def lora_config_kwargs(self, cfg):
        return {"init_lora_weights": f"pissa_niter_{cfg.niter}" if cfg.niter else "pissa"}
