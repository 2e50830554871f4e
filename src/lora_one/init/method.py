"""What an adapter initialisation is, in one object per method, and where to find them by name.

A run asks the method, never its name: which LoraConfig settings (`init_lora_weights`) PEFT wraps the model with, how
many singular directions of the one-step gradient G it needs, whether it moves the base weight
(then exporting and resuming need the initial adapter), whether it reads training batches, and
finally `initialise` sets the adapters of the wrapped model. Each method lives in its own module
beside this one (lora_one.py, lora_ga.py, peft_builtin.py, eva.py) and registers itself here.

Users name a method with `init=<group option>`; the gradient inits keep their axis
`init.direction=LoRA-One|LoRA-GA` (conf/init/gradient.yaml sets `method: ${.direction}`).
"""
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from omegaconf import DictConfig
from peft import PeftModel

from lora_one import ConfigError


@dataclass
class InitReport:
    """What an init tells the run: per-layer statistics for results.json, G per layer when the
    method formed it and kept it (for `init.save_artifacts`), and anything else results.json should
    record about the init (`extra`, e.g. the γ search of `init.stable_gamma=auto`)."""

    layer_stats: dict[str, dict] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] | None = None
    extra: dict = field(default_factory=dict)


class InitMethod:
    """One adapter initialisation. Subclasses set the class attributes and override what differs."""

    name: str                       # the value of `init.method`
    moves_base: bool = False        # W ← W − s·B₀A₀ at init: export/resume need the initial adapter
    needs_batches: bool = False     # `initialise` reads the init batches (init.bsz × init.iters examples)

    def lora_config_kwargs(self, cfg: DictConfig) -> dict:
        """What the method sets in PEFT's LoraConfig while wrapping (`init_lora_weights=True`: PEFT's
        default, B = 0, which the gradient inits overwrite afterwards)."""
        return {"init_lora_weights": True}

    def singular_directions(self, r: int) -> int:
        """How many top singular triplets of G the method needs at LoRA rank r (0: it never uses G)."""
        return 0

    def batch_count(self, cfg: DictConfig) -> int:
        """How many `init.bsz` micro-batches `initialise` reads when `needs_batches` (the first of the
        seeded training order)."""
        return cfg.iters

    def check_config(self, cfg: DictConfig) -> None:
        """Raise one ConfigError naming the first bad `init.*` setting that is not a plain number range
        (types and ranges of numbers are checked before, by the schema in lora_one/config_schema.py)."""

    def initialise(self, model: PeftModel, cfg: DictConfig, batches: list[dict] | None,
                   accelerator: Accelerator, seq2seq: bool) -> InitReport:
        """Set the adapters of the freshly wrapped `model` (PEFT's own inits already did while wrapping)."""
        return InitReport()


METHODS: dict[str, InitMethod] = {}


def register(method_class: type[InitMethod]) -> type[InitMethod]:
    """Class decorator: make a method findable by its `name`."""
    METHODS[method_class.name] = method_class()
    return method_class


def init_method(cfg: DictConfig) -> InitMethod:
    """The method that `init.method` names (e.g. `LoRA-One`, `PiSSA`), or one ConfigError listing the ones
    allowed there: with `init=gradient`, the axis `init.direction` takes only the inits made from G."""
    name = cfg.get("method")
    if cfg.get("name") == "gradient":
        key, allowed = "init.direction", gradient_directions()
    else:
        key, allowed = "init.method", tuple(METHODS)
    if name not in allowed:
        why = "is unknown" if name not in METHODS else "is an init of its own, not a direction (init=<option>)"
        raise ConfigError(f"{key} '{name}' {why}; use one of {allowed}")
    return METHODS[name]


def gradient_directions() -> tuple[str, ...]:
    """The methods built from the singular directions of the one-step gradient G (LoRA-One, LoRA-GA)."""
    return tuple(name for name, method in METHODS.items() if method.singular_directions(1) > 0)
