"""The LoRA-One paper's linear-model experiments: the mechanism (GD slowly aligns the adapter with the
top singular subspace of the one-step full gradient G; the spectral init starts aligned) on a toy."""
from lora_one.theory.experiments import METHODS, TheoryConfig, run_theory, summary
from lora_one.theory.figures import plot_all

__all__ = ["METHODS", "TheoryConfig", "plot_all", "run_theory", "summary"]
