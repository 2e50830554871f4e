"""The paper's tables from one command.

    python scripts/reproduce.py cpu [--workers 2]   # the CPU study, resumable; each record committed as it finishes
    python scripts/reproduce.py report              # REPRODUCTION.md and figures from the committed records alone
    python scripts/reproduce.py verify --sample 3   # re-run cells from scratch, every number beside its record
    python scripts/reproduce.py paper --table gsm8k [--dry-run] [overrides]  # the paper table's slurm job arrays

The logic lives in src/lora_one/reproduce/ (plan, runner, records, stats, report, figures, verify, one_step,
paper)."""
import argparse
import dataclasses
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]  # run_exp.py, and this checkout's package
os.environ.setdefault("LORA_ONE_CONF", str(ROOT / "conf"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pin_kernels() -> None:
    """The same kernels on every x86-64 machine, set before torch loads (workers inherit them): torch picks
    its vectorised kernels, oneDNN and MKL their code paths, by the CPU, so an AVX-512 machine adds in
    another order than an AVX2 one, and a 100-step run amplifies the last bit (measured: a 6-step SST-2
    cell's held-out loss 0.6603316 with ATen's AVX2 kernels, 0.6603149 with its generic ones, 0.6603093
    with MKL_CBWR=COMPATIBLE). Each record keeps them. Set by main, not on import, so a process that
    imports this module (the tests) keeps its own."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        for variable, value in (("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"), ("MKL_CBWR", "AVX2")):
            os.environ.setdefault(variable, value)


RECORDS = ROOT / "docs" / "reproduction" / "cells"
STUDY_STATE = ROOT / "docs" / "reproduction" / "study.json"  # the code state the committed records belong to


def study_digest() -> str | None:
    return json.loads(STUDY_STATE.read_text())["digest"] if STUDY_STATE.exists() else None


def study_code_hint() -> str:
    """Where the study's code is: its commit, checked out beside this checkout."""
    commit = json.loads(STUDY_STATE.read_text())["commit"][:12]
    return f"the study's code beside this checkout (`git worktree add ../study {commit}`"


def clean_code_state():
    """This checkout's code state; a study refuses uncommitted changes to what a cell computes, so its
    records name one commit that re-creates the code."""
    from lora_one.reproduce.records import COMPUTE_PATHS, code_state

    code = code_state(ROOT)
    if code.dirty:
        raise SystemExit(f"error: uncommitted changes under {', '.join(COMPUTE_PATHS)} (what a cell computes with); "
                         "commit them (or stash them) first, so the study's records name the code that made them")
    return code


def cpu(args) -> None:
    from concurrent.futures.process import BrokenProcessPool

    import run_exp
    from lora_one.reproduce.plan import cell_count, cpu_study
    from lora_one.reproduce.runner import Progress, Store, run_study, run_study_in_pool

    code = clean_code_state()
    recorded = study_digest()
    if recorded not in (None, code.digest) and not args.new_code_state:
        raise SystemExit(f"error: the committed records were computed by code state {recorded}, this checkout is "
                         f"{code.digest} (commit {code.commit[:12]}): one study never mixes code states. "
                         f"Resume it from {study_code_hint()}, then this command there; merge the records it "
                         "commits back), or pass --new-code-state to start it again under this code")
    if recorded != code.digest:  # a new study: its state and the commit that re-creates its code
        STUDY_STATE.parent.mkdir(parents=True, exist_ok=True)
        STUDY_STATE.write_text(json.dumps(code.as_dict(), indent=1, sort_keys=True) + "\n")
    study = cpu_study()
    if args.tasks:
        study = dataclasses.replace(study, tasks=tuple(study.task(name) for name in args.tasks))
    store = Store(args.out, RECORDS, code, None if args.no_commit else ROOT)
    if store.repo is not None:
        commit_paths(STUDY_STATE, "study: code state " + code.digest)
    progress = Progress(cell_count(study), lambda line: print(line, flush=True))
    if args.workers == 1:
        run_study(study, store, run_exp.run, progress)
    else:
        try:
            run_study_in_pool(study, store, run_exp.run, progress, args.workers)
        except BrokenProcessPool as err:  # a worker was killed (out of memory?): the finished cells are kept
            raise SystemExit(f"error: a worker process died ({err}); resume with the same command") from None
    report(args)


def commit_paths(path: Path, message: str) -> None:
    import subprocess

    relative = str(path.relative_to(ROOT))
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", relative], capture_output=True,
                      text=True, check=True).stdout.strip():
        subprocess.run(["git", "-C", str(ROOT), "add", "--", relative], check=True)
        subprocess.run(["git", "-C", str(ROOT), "commit", "--quiet", "--only", "-m", message, "--", relative],
                       check=True)


def record_reader():
    """A cell → its committed record under the study's code state (None: not finished)."""
    from lora_one.reproduce.records import read_record

    digest = study_digest()
    return lambda cell: None if digest is None else read_record(RECORDS, cell, digest)


def label_words(task: str) -> list[str]:
    from lora_one.config import compose_config

    return list(compose_config([f"dataset={task}"]).dataset.label_names)


ONE_STEP = ROOT / "docs" / "reproduction" / "one_step"  # .json (scripts/one_step.py's results) and .png


def extra_sections() -> list[str]:
    """The one-step experiment's section, from its committed results."""
    from lora_one.reproduce.one_step import one_step_markdown

    if not ONE_STEP.with_suffix(".json").exists():
        return []
    results = json.loads(ONE_STEP.with_suffix(".json").read_text())
    return [one_step_markdown(results, str(ONE_STEP.with_suffix(".png").relative_to(ROOT)))]


def report(args) -> None:
    from lora_one.reproduce.plan import cpu_study
    from lora_one.reproduce.report import write_reproduction

    try:
        written = write_reproduction(cpu_study(), record_reader(), label_words, ROOT / "REPRODUCTION.md",
                                     ROOT / "docs" / "reproduction", extra_sections(), force=args.force)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    print("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in written), flush=True)


def verify(args) -> None:
    import tempfile

    import run_exp
    from lora_one.reproduce.plan import cpu_study
    from lora_one.reproduce.verify import compare, pick_cells, planned_cells

    study, record_of = cpu_study(), record_reader()
    code = clean_code_state()
    if code.digest != study_digest():
        raise SystemExit(f"error: this checkout computes with code state {code.digest}, the records with "
                         f"{study_digest()}: verify from {study_code_hint()})")
    cells = planned_cells(study, record_of)
    chosen = pick_cells(cells, record_of, args.cells, args.sample, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        verdicts = [compare(cell, record_of(cell), study, Path(scratch), run_exp.run, print) for cell in chosen]
    print(f"{sum(verdicts)} of {len(verdicts)} cells identical in every number")
    if not all(verdicts):
        raise SystemExit(1)


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
    pin_kernels()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cpu_command = sub.add_parser("cpu", help="run the CPU study (cells with a committed record are skipped), commit "
                                             "each record as it finishes, then write REPRODUCTION.md")
    cpu_command.add_argument("--out", type=Path, default=ROOT / "outputs" / "reproduce_cpu",
                             help="the cells' run directories (default: outputs/reproduce_cpu, git-ignored)")
    cpu_command.add_argument("--workers", type=at_least_one, default=1,
                             help="cells run side by side in this many processes (default 1: one after another, "
                                  "in this process); one per core is fastest on a CPU. Every cell runs on the study's "
                                  "thread count either way")
    cpu_command.add_argument("--no-commit", action="store_true", help="write each record, do not git-commit it")
    cpu_command.add_argument("--tasks", nargs="+", choices=["sst2", "cola"],
                             help="run only these tasks' cells (the report still shows the whole study)")
    cpu_command.add_argument("--new-code-state", action="store_true",
                             help="start the study again under this checkout's code "
                                  "(records of another state are ignored)")
    report_command = sub.add_parser("report", help="write REPRODUCTION.md and its figures from the committed records")
    for command in (cpu_command, report_command):
        command.add_argument("--force", action="store_true",
                             help="replace REPRODUCTION.md even with a report built from fewer records")
    verify_command = sub.add_parser("verify", help="re-run cells from scratch and compare every number with its record")
    verify_command.add_argument("cells", nargs="*", help="cell names as the report and records print them, "
                                                         "e.g. 'sst2 final LoRA lr=0.002 seed=1'")
    verify_command.add_argument("--sample", type=at_least_one, help="N cells drawn at random: a tuning run, a trained "
                                                                    "seed run and an init-only run first")
    verify_command.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0)")
    table = sub.add_parser("paper", help="compose (and launch) a paper table's sweeps via the slurm launcher")
    table.add_argument("--table", required=True)
    table.add_argument("--sweep-root", default="multirun/paper", help="each sweep's hydra.sweep.dir goes under it")
    table.add_argument("--launcher", default="slurm",
                       help="hydra/launcher preset (slurm; local for a dry run on this machine)")
    table.add_argument("--dry-run", action="store_true", help="print the commands, launch nothing")
    table.add_argument("overrides", nargs="*", help="added to every sweep, e.g. model.learning_rate=1e-4,2e-4")
    args = parser.parse_args(argv)
    if getattr(args, "out", None) is not None:
        args.out = args.out.resolve()
    from lora_one import ConfigError

    try:
        {"cpu": cpu, "report": report, "verify": verify, "paper": paper}[args.command](args)
    except ConfigError as err:  # one line naming the culprit
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
