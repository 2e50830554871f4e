"""Evaluate a model on gsm8k, as `lora-one-eval gsm8k` does; options and defaults: python eval/gsm8k.py --help
(conf/eval/gsm8k.yaml)."""
from lora_one.eval.cli import main

if __name__ == "__main__":
    main("gsm8k")
