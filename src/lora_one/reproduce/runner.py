"""Run a study's cells, resumably: a cell whose run directory holds results.json, run with the cell's
overrides, is finished and is never run again (run_exp writes that file last, atomically, so its
presence means a complete run; a run made with other overrides, e.g. before the sizing changed, is
stale and is run again).
One progress line per cell: `[k/N] <cell>: <seconds> s` (or `done before`, or the error).

In one process (`run_study`) or in N worker processes (`run_study_in_pool`): both run each cell
with `run_cell` and choose the rates with `plan_finals`, so they decide alike."""
import json
import logging
import math
import multiprocessing
import os
import time
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import yaml

from lora_one.config import compose_config
from lora_one.reproduce.plan import Cell, Study, Task, final_cells, tuning_cells

log = logging.getLogger(__name__)
RESULTS = "results.json"
DONE_BEFORE = "done before"
RunFn = Callable  # run_exp.run(cfg, out_dir) -> results


OVERRIDES = Path(".hydra") / "overrides.yaml"


def is_finished(run_dir: Path, cell: Cell) -> bool:
    overrides = run_dir / OVERRIDES
    return (run_dir / RESULTS).exists() and overrides.exists() and \
        yaml.safe_load(overrides.read_text()) == list(cell.overrides)


def read_results(root: Path, cell: Cell) -> dict | None:
    """The cell's results, None unless it is finished."""
    run_dir = root / cell.path
    return json.loads((run_dir / RESULTS).read_text()) if is_finished(run_dir, cell) else None


class Progress:
    """Counts cells over the whole study and prints one line each."""

    def __init__(self, total: int, echo: Callable[[str], None] = print):
        self.total, self.done, self.echo = total, 0, echo

    def line(self, cell: Cell, outcome: str) -> None:
        self.done += 1
        self.echo(f"[{self.done}/{self.total}] {cell.name}: {outcome}")


def run_cell(cell: Cell, root: Path, run_fn: RunFn) -> str:
    """Run one cell into its directory (with the overrides recorded where Hydra puts them, so
    scripts/make_table.py groups it like a Hydra run); returns the progress outcome."""
    run_dir = root / cell.path
    if is_finished(run_dir, cell):
        return DONE_BEFORE
    (run_dir / RESULTS).unlink(missing_ok=True)  # a stale run's
    (run_dir / OVERRIDES).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / OVERRIDES).write_text(yaml.safe_dump(list(cell.overrides)))
    start = time.time()
    try:
        run_fn(compose_config(list(cell.overrides)), str(run_dir))
    except Exception as err:  # one failed cell must not stop the study: report it, the table marks it missing
        log.exception("cell %s failed", cell.name)
        return f"FAILED after {time.time() - start:.0f} s ({type(err).__name__}: {err})"
    return f"{time.time() - start:.0f} s"


def held_out_loss(results: dict) -> float:
    """The selection criterion: the loss on rows held out of the training file (never dev/test);
    a diverged run (nan/inf) ranks last."""
    loss = results.get("eval_loss")
    return loss if loss is not None and math.isfinite(loss) else math.inf


def choose_learning_rates(tuning: list[tuple[Cell, dict | None]]) -> dict[str, float | None]:
    """Per method, the grid rate whose tuning run has the lowest held-out loss (the first in grid
    order on a tie); None where no tuning run of the method finished."""
    chosen, best = {}, {}
    for cell, results in tuning:
        chosen.setdefault(cell.method, None)
        if results is None:
            continue
        loss = held_out_loss(results)
        if cell.method not in best or loss < best[cell.method]:
            best[cell.method], chosen[cell.method] = loss, cell.learning_rate
    return chosen


def plan_finals(study: Study, task: Task, root: Path, progress: Progress) -> tuple[dict[str, float | None], list[Cell]]:
    """Once the task's tuning runs are over: choose each method's rate, say so, and plan the seed runs;
    a method left without a rate has no seed runs, so the progress total drops them."""
    tuning = tuning_cells(study, task)
    chosen = choose_learning_rates([(cell, read_results(root, cell)) for cell in tuning])
    progress.echo(f"{task.name}: chosen learning rates (lowest held-out loss at seed {study.tuning_seed}): "
                  + ", ".join(f"{m} {'–' if r is None else f'{r:g}'}" for m, r in chosen.items()))
    progress.total -= sum(m.trains for m in study.methods if chosen.get(m.name) is None) * len(study.seeds)
    return chosen, final_cells(study, task, chosen)


def run_task(study: Study, task_name: str, root: Path, run_fn: RunFn, progress: Progress) -> dict[str, float | None]:
    """Tune every trained method, choose its rate, run the seeds; returns the chosen rates."""
    task = study.task(task_name)
    for cell in tuning_cells(study, task):
        progress.line(cell, run_cell(cell, root, run_fn))
    chosen, finals = plan_finals(study, task, root, progress)
    for cell in finals:
        progress.line(cell, run_cell(cell, root, run_fn))
    return chosen


def run_study(study: Study, root: Path, run_fn: RunFn, progress: Progress) -> None:
    """Task after task (so a partial study has whole tables first)."""
    for task in study.tasks:
        run_task(study, task.name, root, run_fn, progress)


def run_study_in_pool(study: Study, root: Path, run_fn: RunFn, progress: Progress, workers: int,
                      threads: int) -> None:
    """The study in `workers` processes of `threads` torch threads each: on a small CPU, single-threaded
    runs side by side finish sooner than one multi-threaded run after another (a 135M model's small
    matrix products keep a second thread of one run mostly idle). A seed run needs its task's chosen
    rate, so every task's tuning runs go first, then every task's seed runs; progress lines come in the
    order the cells finish. `run_fn` travels to the workers by reference: a module-level function
    (e.g. run_exp.run)."""
    with worker_pool(workers, threads) as pool:
        run_in_pool(pool, [cell for task in study.tasks for cell in tuning_cells(study, task)], root, run_fn, progress)
        finals = [cell for task in study.tasks for cell in plan_finals(study, task, root, progress)[1]]
        run_in_pool(pool, finals, root, run_fn, progress)


def run_in_pool(pool: Executor, cells: list[Cell], root: Path, run_fn: RunFn, progress: Progress) -> None:
    """Every unfinished cell to the pool at once; a line for each as it finishes (a failed run is its
    cell's line, as run_cell reports it; a dead worker raises here). Finished cells are told apart here,
    not in a worker, so resuming a finished study starts no worker process."""
    futures = {}
    for cell in cells:
        if is_finished(root / cell.path, cell):
            progress.line(cell, DONE_BEFORE)
        else:
            futures[pool.submit(run_cell, cell, root, run_fn)] = cell
    for future in as_completed(futures):
        progress.line(futures[future], future.result())


@contextmanager
def worker_pool(workers: int, threads: int) -> Iterator[Executor]:
    """Worker processes, spawned rather than forked (a fork of a process whose torch thread pools have
    started can hang). On the way out, by Ctrl-C or a worker that died (BrokenProcessPool), the cells not
    yet started are dropped: they have no results.json, so the same command runs them on resume."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=limit_threads, initargs=(threads,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def limit_threads(threads: int) -> None:
    """A worker's start: torch, and any library or child process started after, use `threads` threads.
    torch itself is loaded by then (unpickling this function imports this module, which imports it), so
    the variables it reads at import come too late for it: hence set_num_threads."""
    import torch

    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(threads)
