"""The paper's tables from one command.

    python scripts/reproduce.py cpu [--out outputs/reproduce_cpu] [--workers 2 [--threads 1]]
                                    # the CPU study (resumable) → REPRODUCTION.md; cells side by side in N processes
    python scripts/reproduce.py report [--out outputs/reproduce_cpu] # REPRODUCTION.md from what has finished
    python scripts/reproduce.py paper --table gsm8k [--dry-run] [overrides]  # the paper table's slurm job arrays

The logic lives in src/lora_one/reproduce/ (plan, runner, report, figures, paper)."""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]  # run_exp.py, and this checkout's package
os.environ.setdefault("LORA_ONE_CONF", str(ROOT / "conf"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def cpu(args) -> None:
    from concurrent.futures.process import BrokenProcessPool

    import run_exp
    from lora_one.reproduce.plan import cell_count, cpu_study
    from lora_one.reproduce.runner import Progress, run_study, run_study_in_pool

    study = cpu_study()
    progress = Progress(cell_count(study), lambda line: print(line, flush=True))
    if args.workers == 1:
        run_study(study, args.out, run_exp.run, progress)
    else:
        try:
            run_study_in_pool(study, args.out, run_exp.run, progress, args.workers, args.threads)
        except BrokenProcessPool as err:  # a worker was killed (out of memory?): the finished cells are kept
            raise SystemExit(f"error: a worker process died ({err}); resume with the same command") from None
    report(args)


def report(args) -> None:
    from lora_one.reproduce.plan import cpu_study
    from lora_one.reproduce.report import write_reproduction

    written = write_reproduction(cpu_study(), args.out, ROOT / "REPRODUCTION.md", ROOT / "docs" / "reproduction",
                                 command=" ".join(["python scripts/reproduce.py", *sys.argv[1:]]))
    print("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in written), flush=True)


def paper(args) -> None:
    from lora_one.reproduce.paper import launch, paper_commands

    commands = paper_commands(args.table, args.sweep_root, args.launcher, tuple(args.overrides))
    launch(commands, ROOT, dry_run=args.dry_run)


def at_least_one(text: str) -> int:
    number = int(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count")
    return number


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("cpu", "run the CPU study (finished cells are skipped), then write REPRODUCTION.md"),
                           ("report", "write REPRODUCTION.md and its figures from the finished cells")):
        command = sub.add_parser(name, help=helptext)
        command.add_argument("--out", type=Path, default=ROOT / "outputs" / "reproduce_cpu",
                             help="the study's run directories (default: outputs/reproduce_cpu, git-ignored)")
    cpu_command = sub.choices["cpu"]
    cpu_command.add_argument("--workers", type=at_least_one, default=1,
                             help="cells run side by side in this many processes (default 1: one after another, "
                                  "in this process); one per core is fastest on a CPU")
    cpu_command.add_argument("--threads", type=at_least_one, default=1,
                             help="torch threads in each worker process, with --workers > 1 (default 1)")
    table = sub.add_parser("paper", help="compose (and launch) a paper table's sweeps via the slurm launcher")
    table.add_argument("--table", required=True)
    table.add_argument("--sweep-root", default="multirun/paper", help="each sweep's hydra.sweep.dir goes under it")
    table.add_argument("--launcher", default="slurm", help="hydra/launcher preset (slurm; local for a dry run on this machine)")
    table.add_argument("--dry-run", action="store_true", help="print the commands, launch nothing")
    table.add_argument("overrides", nargs="*", help="added to every sweep, e.g. model.learning_rate=1e-4,2e-4")
    args = parser.parse_args(argv)
    if getattr(args, "out", None) is not None:
        args.out = args.out.resolve()
    from lora_one import ConfigError

    try:
        {"cpu": cpu, "report": report, "paper": paper}[args.command](args)
    except ConfigError as err:  # one line naming the culprit
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
