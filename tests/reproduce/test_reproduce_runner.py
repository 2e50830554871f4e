"""The CPU study in worker processes (`scripts/reproduce.py cpu --workers N`): every cell runs in a
worker with the threads asked for, the rates chosen are those computed by hand and those the
one-process runner chooses, a finished study runs nothing again, and a worker that dies stops the
study in a state the same call resumes. run_exp.run is replaced by module-level fakes (a worker
imports them by reference) that write a held-out loss known in advance; records are kept by the
parent process, one per finished cell."""
import json
import math
import os
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from lora_one.reproduce.plan import Method, Study, Task, cell_count, final_cells, tuning_cells
from lora_one.reproduce.records import CodeState
from lora_one.reproduce.runner import Progress, Store, run_study, run_study_in_pool

CODE = CodeState("0" * 16, None, False)

# the fake held-out loss is |log10(lr) - best|: lowest at 1e-4 for PiSSA, near 5e-4 for LoRA, near 2.5e-3 for LoRA-One
BEST_LOG10_RATE = {"pissa": -4.0, "default": -3.3, "gradient": -2.7}
# hand-computed from the losses at 1e-4, 5e-4, 2.5e-3: PiSSA 0.000, 0.699, 1.398; LoRA 0.700, 0.001, 0.698;
# LoRA-One 1.300, 0.601, 0.098
CHOSEN = {"LoRA": 5e-4, "PiSSA": 1e-4, "LoRA-One": 2.5e-3}
WORKER_THREADS = 3  # not what a worker would have unless told (the tests run with OMP_NUM_THREADS=1)


def fake_run(cfg, out_dir: str) -> None:
    """run_exp.run's stand-in: the fake held-out loss, and which process ran the cell with how many threads."""
    import torch

    loss = abs(math.log10(cfg.model.learning_rate) - BEST_LOG10_RATE[cfg.init.name])
    Path(out_dir, "results.json").write_text(json.dumps({"eval_loss": loss, "provenance": {
        "pid": os.getpid(), "torch_threads": torch.get_num_threads()}}))


CRASHING_CELL = "cola/final/LoRA/lr=0.0005,seed=1"


def crashing_run(cfg, out_dir: str) -> None:
    """fake_run, except that PiSSA's runs fail (as a cell may) and the worker running CRASHING_CELL
    dies on the spot (as one killed for memory)."""
    if cfg.init.name == "pissa":
        raise RuntimeError("a cell that fails")
    if out_dir.endswith(CRASHING_CELL):
        os._exit(1)
    fake_run(cfg, out_dir)


def glue(name: str) -> Task:
    return Task(name, (f"dataset={name}",), "glue", ("eval=glue", "eval.glue.limit=8"), "dev, 8 rows")


def small_study() -> Study:
    """Two tasks, an untrained method among four, three rates, one seed: 2 × (3 × 3 + 4) = 26 cells."""
    gradient = ("init=gradient", "init.direction=LoRA-One")
    return Study(common=("model=tiny_llama", "model.max_steps=2", "wandb.mode=disabled"), gradient_init=("init.bsz=2",),
                 tasks=(glue("sst2"), glue("cola")),
                 methods=(Method("LoRA", ("init=default",)), Method("PiSSA", ("init=pissa",)),
                          Method("LoRA-One", gradient, gradient_init=True),
                          Method("spectral init only", (*gradient, "model.max_steps=0"), trains=False,
                                 gradient_init=True)),
                 learning_rates=(1e-4, 5e-4, 2.5e-3), seeds=(1,), tuning_seeds=(0,), threads=WORKER_THREADS)


def store_in(root: Path) -> Store:
    return Store(root / "runs", root / "cells", CODE)


def results_files(study: Study, root: Path, chosen: dict) -> list[Path]:
    """The record of every cell of the study, the seed runs at the `chosen` rates."""
    cells = [c for task in study.tasks for c in tuning_cells(study, task) + final_cells(study, task, chosen)]
    return [root / "cells" / f"{c.path}.json" for c in cells]


def run_in_workers(study: Study, root: Path, run_fn=fake_run) -> list[str]:
    lines = []
    run_study_in_pool(study, store_in(root), run_fn, Progress(cell_count(study), lines.append), workers=2)
    return lines


def chosen_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if "chosen learning rates" in line]


def progress_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("[")]


EXPECTED_CHOICE = [f"{task}: chosen learning rates (lowest held-out loss, mean over seeds 0): LoRA 0.0005, "
                   "PiSSA 0.0001, LoRA-One 0.0025" for task in ("sst2", "cola")]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    study, root = small_study(), tmp_path_factory.mktemp("workers")
    return study, root, run_in_workers(study, root)


def test_every_cell_runs_in_a_worker_with_its_threads(study_run):
    study, root, lines = study_run
    results = [json.loads(p.read_text()) for p in results_files(study, root, CHOSEN)]
    assert len(results) == 26
    assert {r["provenance"]["torch_threads"] for r in results} == {WORKER_THREADS}
    assert os.getpid() not in {r["provenance"]["pid"] for r in results}
    progress = progress_lines(lines)
    assert len(progress) == 26 and progress[-1].startswith("[26/26] ") and all(line.endswith(" s") for line in progress)
    # every task's tuning runs come before any seed run (which needs its task's chosen rate)
    # the untrained method's runs first (no rate to choose), then every task's tuning runs before any trained seed
    # run (which needs its task's chosen rate)
    assert [" tune " in line for line in progress] == [False] * 2 + [True] * 18 + [False] * 6
    assert all("spectral init only" in line for line in progress[:2]) and lines[20:22] == EXPECTED_CHOICE


def test_rates_chosen_in_workers_are_the_one_process_choice(study_run, tmp_path):
    study, root, lines = study_run
    assert chosen_lines(lines) == EXPECTED_CHOICE
    in_process = []
    run_study(study, store_in(tmp_path), fake_run, Progress(cell_count(study), in_process.append))
    assert chosen_lines(in_process) == EXPECTED_CHOICE and in_process[-1].startswith("[26/26] ")
    assert all(json.loads(a.read_text())["eval_loss"] == json.loads(b.read_text())["eval_loss"]
               for a, b in zip(results_files(study, root, CHOSEN), results_files(study, tmp_path, CHOSEN)))


def test_a_finished_study_runs_nothing_again(study_run):
    study, root, _ = study_run
    written = {p: p.stat().st_mtime_ns for p in results_files(study, root, CHOSEN)}
    lines = run_in_workers(study, root, crashing_run)  # were any cell run, PiSSA's would fail
    progress = progress_lines(lines)
    assert len(progress) == 26 and all(line.endswith(": done before") for line in progress)
    assert chosen_lines(lines) == EXPECTED_CHOICE and {p: p.stat().st_mtime_ns for p in written} == written


@pytest.mark.slow
def test_a_study_whose_worker_died_resumes(tmp_path):
    study = small_study()
    lines = []
    with pytest.raises(BrokenProcessPool):
        run_study_in_pool(study, store_in(tmp_path), crashing_run, Progress(cell_count(study), lines.append), 2)
    # a failed run did not stop the study: all 18 tuning lines, PiSSA's 6 failures among them, then the
    # choice without PiSSA, whose 2 seed runs leave the total
    assert sum(line.endswith("(RuntimeError: a cell that fails)") for line in lines[2:20]) == 6
    assert chosen_lines(lines) == [line.replace("PiSSA 0.0001", "PiSSA –") for line in EXPECTED_CHOICE]
    assert lines[20:22] == chosen_lines(lines) and all("/24] " in line for line in lines[22:])
    finished_before = {p: p.stat().st_mtime_ns for p in results_files(study, tmp_path, CHOSEN) if p.exists()}
    assert tmp_path / "cells" / f"{CRASHING_CELL}.json" not in finished_before

    resumed = run_in_workers(study, tmp_path)
    assert all(p.exists() for p in results_files(study, tmp_path, CHOSEN))
    assert {p: p.stat().st_mtime_ns for p in finished_before} == finished_before  # none run twice
    assert sum(line.endswith(": done before") for line in resumed) == len(finished_before)
    assert chosen_lines(resumed) == EXPECTED_CHOICE and resumed[-1].startswith("[26/26] ")
