"""Evaluate a model on mmlu, as `lora-one-eval mmlu` does; options and defaults: python eval/mmlu.py --help
(conf/eval/mmlu.yaml)."""
from lora_one.eval.cli import main

if __name__ == "__main__":
    main("mmlu")
