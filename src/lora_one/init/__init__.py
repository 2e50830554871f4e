"""Adapter initialisations, one module per method, found by name through `init_method(cfg.init)`."""
from lora_one.init import eva, lora_ga, lora_one, peft_builtin  # noqa: F401  (each registers its method)
from lora_one.init.gradient_init import redo_base_offset, save_init_artifacts, save_initial_adapter
from lora_one.init.method import METHODS, InitMethod, InitReport, init_method

__all__ = ["METHODS", "InitMethod", "InitReport", "init_method", "redo_base_offset", "save_init_artifacts",
           "save_initial_adapter"]
