"""Run a study's cells, resumably. A cell is finished when its committed record exists with the
cell's overrides and the study's code state (records.py); it is never run again. Each run goes to
its run directory (full results.json, adapter; git-ignored), and its record is written (and, with
`Store.repo`, committed) by this process as the cell finishes, so a study larger than one sitting
resumes on another machine from the repository.
One progress line per cell: `[k/N] <cell>: <seconds> s` (or `done before`, or the error).

In one process (`run_study`) or in N worker processes (`run_study_in_pool`): both run each cell with
`run_cell` under the study's thread count, and plan tuning and seed runs with `tuning_plan` and
`plan_finals`, so they decide alike and compute the same numbers."""
import json
import logging
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import yaml

from lora_one.config import compose_config
from lora_one.reproduce.plan import Cell, Study, Task, extended_grid, final_cells, tuning_cells
from lora_one.reproduce.records import CodeState, commit_record, read_record, write_record

log = logging.getLogger(__name__)
RESULTS = "results.json"
OVERRIDES = Path(".hydra") / "overrides.yaml"
DONE_BEFORE = "done before"
RunFn = Callable  # run_exp.run(cfg, out_dir) -> results


@dataclass(frozen=True)
class Store:
    """Where a study's cells live: `runs` (their run directories, git-ignored) and `records` (the
    committed data), for one code state; `repo`: commit each record there as it is written."""
    runs: Path
    records: Path
    code: CodeState
    repo: Path | None = None

    def record(self, cell: Cell) -> dict | None:
        return read_record(self.records, cell, self.code.digest)

    def keep(self, cell: Cell, results: dict) -> None:
        path = write_record(self.records, cell, results, self.code)
        if self.repo is not None:
            commit_record(self.repo, path, cell)


class Progress:
    """Counts cells over the whole study and prints one line each."""

    def __init__(self, total: int, echo: Callable[[str], None] = print):
        self.total, self.done, self.echo = total, 0, echo

    def line(self, cell: Cell, outcome: str) -> None:
        self.done += 1
        self.total = max(self.total, self.done)  # an extended grid adds cells
        self.echo(f"[{self.done}/{self.total}] {cell.name}: {outcome}")


def run_cell(cell: Cell, runs: Path, run_fn: RunFn, threads: int) -> tuple[str, dict | None]:
    """Run one cell into its run directory with `threads` torch threads (the overrides recorded where
    Hydra puts them, so scripts/make_table.py groups it like a Hydra run); returns the progress
    outcome and the results (None if the run failed)."""
    limit_threads(threads)
    run_dir = runs / cell.path
    (run_dir / RESULTS).unlink(missing_ok=True)  # a stale run's
    (run_dir / OVERRIDES).parent.mkdir(parents=True, exist_ok=True)
    (run_dir / OVERRIDES).write_text(yaml.safe_dump(list(cell.overrides)))
    start = time.time()
    try:
        run_fn(compose_config(list(cell.overrides)), str(run_dir))
    except Exception as err:  # one failed cell must not stop the study: report it, the table marks it missing
        log.exception("cell %s failed", cell.name)
        return f"FAILED after {time.time() - start:.0f} s ({type(err).__name__}: {err})", None
    return f"{time.time() - start:.0f} s", json.loads((run_dir / RESULTS).read_text())


def held_out_loss(record: dict) -> float:
    """The selection criterion: the loss on rows held out of the training file (never dev/test);
    a diverged run (nan/inf, stored as null) ranks last."""
    loss = record.get("eval_loss")
    return loss if loss is not None and math.isfinite(loss) else math.inf


def grid_losses(study: Study, task: Task, records: Callable[[Cell], dict | None],
                grids: dict[str, tuple[float, ...]]) -> dict[str, dict[float, float | None]]:
    """method → rate → mean held-out loss over the tuning seeds (None until every tuning seed finished)."""
    by_rate: dict[str, dict[float, list]] = {}
    for cell in tuning_cells(study, task, grids):
        record = records(cell)
        by_rate.setdefault(cell.method, {}).setdefault(cell.learning_rate, []).append(
            None if record is None else held_out_loss(record))
    return {method: {rate: None if None in losses else statistics.fmean(losses) for rate, losses in rates.items()}
            for method, rates in by_rate.items()}


def best_rate(losses: dict[float, float | None]) -> float | None:
    """The rate of the lowest mean held-out loss (the lowest rate on a tie); None until every rate finished."""
    if not losses or None in losses.values():
        return None
    return min(sorted(losses), key=lambda rate: losses[rate])


def tuning_plan(study: Study, task: Task, records: Callable[[Cell], dict | None]) -> tuple[dict, list[Cell]]:
    """(each method's grid, the tuning cells still to run). A method's grid starts as its first grid;
    once all its points finished, a best rate on the edge adds the next rate beyond it (at most
    `study.grid_extensions` times), so the chosen rate is interior where the budget allows."""
    grids, pending = {}, []
    for method in (m for m in study.methods if m.trains):
        grid = study.first_grid(method)
        while True:
            unfinished = [cell for cell in tuning_cells(study, task, {method.name: grid}) if cell.method == method.name
                          and records(cell) is None]
            losses = grid_losses(study, task, records, {method.name: grid})[method.name]
            extensions_left = study.grid_extensions - len(grid) + len(study.first_grid(method))
            extended = extended_grid(grid, best_rate(losses), extensions_left)
            if unfinished or extended == grid:
                break
            grid = extended
        grids[method.name] = grid
        pending += unfinished
    return grids, pending


def choose_learning_rates(study: Study, task: Task, records: Callable[[Cell], dict | None],
                          grids: dict[str, tuple[float, ...]]) -> dict[str, float | None]:
    """Per trained method, the grid rate of the lowest mean held-out loss over the tuning seeds; None
    where some grid point has not finished."""
    return {name: best_rate(losses) for name, losses in grid_losses(study, task, records, grids).items()}


def plan_finals(study: Study, task: Task, store: Store,
                progress: Progress) -> tuple[dict[str, float | None], list[Cell]]:
    """Once the task's tuning runs are over: choose each method's rate, say so, and plan the seed runs;
    a method left without a rate has no seed runs, so the progress total drops them."""
    grids, _ = tuning_plan(study, task, store.record)
    chosen = choose_learning_rates(study, task, store.record, grids)
    seeds = ", ".join(str(s) for s in study.tuning_seeds)
    progress.echo(f"{task.name}: chosen learning rates (lowest held-out loss, mean over seeds {seeds}): "
                  + ", ".join(f"{m} {'–' if r is None else f'{r:g}'}" for m, r in chosen.items()))
    progress.total -= sum(m.trains for m in study.methods if chosen.get(m.name) is None) * len(study.seeds)
    return chosen, final_cells(study, task, chosen)


def announce_finished(cells: list[Cell], store: Store, progress: Progress) -> list[Cell]:
    """A `done before` line for each finished cell; returns the others."""
    unfinished = []
    for cell in cells:
        if store.record(cell) is None:
            unfinished.append(cell)
        else:
            progress.line(cell, DONE_BEFORE)
    return unfinished


def run_here(cells: list[Cell], study: Study, store: Store, run_fn: RunFn, progress: Progress) -> list[Cell]:
    """The cells one after another in this process; returns those that failed."""
    failed = []
    for cell in cells:
        finish_cell(cell, *run_cell(cell, store.runs, run_fn, study.threads), store, progress, failed)
    return failed


def finish_cell(cell: Cell, outcome: str, results: dict | None, store: Store, progress: Progress,
                failed: list[Cell]) -> None:
    """A run's end, in the process that keeps records: its record kept (or the cell listed as failed), its line."""
    if results is None:
        failed.append(cell)
    else:
        store.keep(cell, results)
    progress.line(cell, outcome)


def tune(study: Study, tasks: list[Task], store: Store, run_cells: Callable[[list[Cell]], list[Cell]],
         progress: Progress) -> None:
    """The tasks' tuning runs, round by round while grids extend. A failed run is not tried again in this
    call (its method's grid stays unfinished, so the method gets no seed runs; a later call retries it)."""
    announce_finished([c for task in tasks
                       for c in tuning_cells(study, task, tuning_plan(study, task, store.record)[0])],
                      store, progress)
    failed: list[Cell] = []
    while pending := [cell for task in tasks for cell in tuning_plan(study, task, store.record)[1]
                      if cell not in failed]:
        failed += run_cells(pending)


def untrained_cells(study: Study, tasks: list[Task]) -> list[Cell]:
    """The seed runs of methods that take no step (no rate to choose): they need no tuning, so they go first."""
    return [cell for task in tasks for cell in final_cells(study, task, {})]


def run_study(study: Study, store: Store, run_fn: RunFn, progress: Progress) -> None:
    """Task after task in this process (so a partial study has whole tables first)."""
    def run_cells(cells: list[Cell]) -> list[Cell]:
        return run_here(cells, study, store, run_fn, progress)

    for task in study.tasks:
        first = untrained_cells(study, [task])
        run_cells(announce_finished(first, store, progress))
        tune(study, [task], store, run_cells, progress)
        finals = [cell for cell in plan_finals(study, task, store, progress)[1] if cell not in first]
        run_cells(announce_finished(finals, store, progress))


def run_study_in_pool(study: Study, store: Store, run_fn: RunFn, progress: Progress, workers: int) -> None:
    """The study in `workers` processes: on a small CPU, single-threaded runs side by side finish
    sooner than one multi-threaded run after another. A seed run of a trained method needs its task's
    chosen rate, so the untrained methods' runs and every task's tuning runs go first, then the other
    seed runs; progress lines come in the order the cells finish. `run_fn` travels to the workers by
    reference: a module-level function (run_exp.run)."""
    with worker_pool(workers) as pool:
        def run_cells(cells: list[Cell]) -> list[Cell]:
            return run_in_pool(pool, cells, study, store, run_fn, progress)

        first = untrained_cells(study, list(study.tasks))
        run_cells(announce_finished(first, store, progress))
        tune(study, list(study.tasks), store, run_cells, progress)
        finals = [cell for task in study.tasks for cell in plan_finals(study, task, store, progress)[1]
                  if cell not in first]
        run_cells(announce_finished(finals, store, progress))


def run_in_pool(pool: Executor, cells: list[Cell], study: Study, store: Store, run_fn: RunFn,
                progress: Progress) -> list[Cell]:
    """Every cell to the pool at once; its record is kept here as it finishes (one writer, one git
    commit at a time), with a progress line (a failed run is its cell's line; a dead worker raises
    here). Returns the cells that failed."""
    futures = {pool.submit(run_cell, cell, store.runs, run_fn, study.threads): cell for cell in cells}
    failed = []
    for future in as_completed(futures):
        finish_cell(futures[future], *future.result(), store, progress, failed)
    return failed


@contextmanager
def worker_pool(workers: int) -> Iterator[Executor]:
    """Worker processes, spawned rather than forked (a fork of a process whose torch thread pools have
    started can hang). On the way out, by Ctrl-C or a worker that died (BrokenProcessPool), the cells not
    yet started are dropped: they have no record, so the same command runs them on resume."""
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def limit_threads(threads: int) -> None:
    """torch, and any library or child process started after, use `threads` threads: the study's
    numbers depend on it (a reduction split over two threads adds in another order)."""
    import torch

    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(threads)
