"""Evaluate a model on commonsense, as `lora-one-eval commonsense` does; options and defaults:
python eval/commonsense.py --help (conf/eval/commonsense.yaml)."""
from lora_one.eval.cli import main

if __name__ == "__main__":
    main("commonsense")
