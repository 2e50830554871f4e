"""Evaluate a model on mmlu; options and defaults: python eval/mmlu.py --help (conf/eval/mmlu.yaml)."""
from lora_one.eval.cli import main

if __name__ == "__main__":
    main("mmlu")
