"""Evaluate a model with lm-evaluation-harness, as `lora-one-eval lm_eval` does; options and defaults:
python eval/lm_eval.py --help (conf/eval/lm_eval.yaml). E.g. --model smollm2_135m --adapter outputs/…/adapter
--tasks gsm8k,boolq --limit 50."""
import os
import sys

# Python puts this script's folder first on sys.path, where this file would shadow the `lm_eval` package.
sys.path.remove(os.path.dirname(os.path.abspath(__file__)))

from lora_one.eval.cli import main  # noqa: E402

if __name__ == "__main__":
    main("lm_eval")
