"""Evaluate a model on glue, as `lora-one-eval glue` does; options and defaults: python eval/glue.py --help
(conf/eval/glue.yaml)."""
from lora_one.eval.cli import main

if __name__ == "__main__":
    main("glue")
