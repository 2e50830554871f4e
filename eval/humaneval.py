"""Evaluate a model on humaneval, as `lora-one-eval humaneval` does; options and defaults: python eval/humaneval.py
--help (conf/eval/humaneval.yaml). It executes model-written code, so it needs `--confirm_run_unsafe_code true`;
README, "Security of the HumanEval sandbox", says what the sandbox guarantees as root and as a user."""
from lora_one.eval.cli import main

if __name__ == "__main__":
    main("humaneval")
