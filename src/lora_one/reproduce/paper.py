"""Paper scale: a paper table as Hydra sweeps, one `python run_exp.py -m` per method, each a slurm
job array (hydra/launcher=slurm, one array task per seed, or per task × seed for GLUE) with the
table's experiment file and its official hyperparameters. Each sweep writes into a fixed directory,
<sweep root>/<table>/<method>, so relaunching the same command resumes every run from its checkpoint,
and `python scripts/make_table.py <sweep root>/<table>` turns the finished runs into the table."""
import shlex
import subprocess
from pathlib import Path

from lora_one import ConfigError
from lora_one.reproduce.plan import slug

# Table → (experiment file, extra sweep axes). The experiment files hold the official settings.
TABLES = {
    "gsm8k": ("llama2_metamath", ()),
    "commonsense": ("llama2_commonsense", ()),
    "mmlu": ("llama2_alpaca_mmlu", ()),
    "humaneval": ("llama2_code_feedback", ()),
    "glue": ("t5_glue", ("dataset=sst2,cola,mrpc,qnli,mnli",)),
}
# The paper's compared methods (LoRA+ and the preconditioned LoRA-One among them).
PAPER_METHODS = {
    "LoRA": ("init=default",),
    "LoRA+": ("init=default", "optim=loraplus"),
    "PiSSA": ("init=pissa",),
    "LoRA-GA": ("init=gradient", "init.direction=LoRA-GA"),
    "LoRA-One": ("init=gradient", "init.direction=LoRA-One"),
    "LoRA-One + scaled_adamw": ("init=gradient", "init.direction=LoRA-One", "optim=scaled_adamw"),
}
SEEDS = "seed=1,2,3"


def paper_commands(table: str, sweep_root: str = "multirun/paper", launcher: str = "slurm",
                   extra: tuple[str, ...] = ()) -> list[list[str]]:
    """One `run_exp.py -m` command (argv) per method of the table; `extra` overrides go to each."""
    if table not in TABLES:
        raise ConfigError(f"paper table '{table}' is unknown; use one of {sorted(TABLES)}")
    experiment, axes = TABLES[table]
    return [["python", "run_exp.py", "-m", f"hydra/launcher={launcher}", f"experiment={experiment}", *overrides,
             *axes, SEEDS, *extra, f"hydra.sweep.dir={sweep_root}/{table}/{slug(method)}"]
            for method, overrides in PAPER_METHODS.items()]


def launch(commands: list[list[str]], root: Path, dry_run: bool) -> None:
    """Print each command; unless `dry_run`, run it from the repository root (the slurm launcher
    submits the array and returns)."""
    for command in commands:
        print(shlex.join(command), flush=True)
        if not dry_run:
            subprocess.run(command, cwd=root, check=True)
