"""Run a study's cells, resumably: a cell whose run directory holds results.json, run with the cell's
overrides, is finished and is never run again (run_exp writes that file last, atomically, so its
presence means a complete run; a run made with other overrides, e.g. before the sizing changed, is
stale and is run again).
One progress line per cell: `[k/N] <cell>: <seconds> s` (or `done before`, or the error)."""
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import yaml

from lora_one.config import compose_config
from lora_one.reproduce.plan import Cell, Study, final_cells, tuning_cells

log = logging.getLogger(__name__)
RESULTS = "results.json"
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
        return "done before"
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


def run_task(study: Study, task_name: str, root: Path, run_fn: RunFn, progress: Progress) -> dict[str, float | None]:
    """Tune every trained method, choose its rate, run the seeds; returns the chosen rates."""
    task = study.task(task_name)
    tuning = tuning_cells(study, task)
    for cell in tuning:
        progress.line(cell, run_cell(cell, root, run_fn))
    chosen = choose_learning_rates([(cell, read_results(root, cell)) for cell in tuning])
    progress.echo(f"{task.name}: chosen learning rates (lowest held-out loss at seed {study.tuning_seed}): "
                  + ", ".join(f"{m} {'–' if r is None else f'{r:g}'}" for m, r in chosen.items()))
    finals = final_cells(study, task, chosen)
    skipped = sum(m.trains for m in study.methods if chosen.get(m.name) is None) * len(study.seeds)
    progress.total -= skipped
    for cell in finals:
        progress.line(cell, run_cell(cell, root, run_fn))
    return chosen


def run_study(study: Study, root: Path, run_fn: RunFn, progress: Progress) -> None:
    """Task after task (so a partial study has whole tables first)."""
    for task in study.tasks:
        run_task(study, task.name, root, run_fn, progress)

