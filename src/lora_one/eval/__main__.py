"""`python -m lora_one.eval <task> [options]`: the same as `lora-one-eval <task> [options]`."""
from lora_one.eval.cli import eval_command

if __name__ == "__main__":
    eval_command()
