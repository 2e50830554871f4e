"""`reproduce.py verify`: re-run cells of the study from scratch and put every number beside the one its
committed record holds, with a verdict per number (identical, or the difference). Times and the
provenance are not numbers of the result and are left out."""
import math
import os
import random
from pathlib import Path
from typing import Callable

from lora_one.reproduce.plan import FINAL, TUNE, Cell, Study, final_cells, tuning_cells
from lora_one.reproduce.records import KERNEL_SETTINGS, CodeState, make_record
from lora_one.reproduce.runner import choose_learning_rates, run_cell, tuning_plan

# times: not results
NOT_RESULTS = ("provenance", "train_time_s", "init_time_s", "seconds", "code", "kernels", "cell", "overrides")


def planned_cells(study: Study, record_of: Callable[[Cell], dict | None]) -> list[Cell]:
    """Every cell of the study as planned from the records so far: the tuning grids, then the seed runs."""
    cells = []
    for task in study.tasks:
        grids, _ = tuning_plan(study, task, record_of)
        rates = choose_learning_rates(study, task, record_of, grids)
        cells += tuning_cells(study, task, grids) + final_cells(study, task, rates)
    return cells


def pick_cells(cells: list[Cell], record_of: Callable[[Cell], dict | None], names: list[str], sample: int | None,
               seed: int) -> list[Cell]:
    """The cells named, or `sample` finished ones drawn with `seed`: one tuning run, one trained seed run
    and one init-only run first (where the study has them), then any."""
    finished = [cell for cell in cells if record_of(cell) is not None]
    if names:
        by_name = {cell.name: cell for cell in finished}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise SystemExit(f"error: no finished cell named {unknown[0]!r}; e.g. {finished[0].name!r}" if finished
                             else "error: the study has no finished cell yet")
        return [by_name[name] for name in names]
    draw = random.Random(seed)
    kinds = [[c for c in finished if c.stage == TUNE],
             [c for c in finished if c.stage == FINAL and c.learning_rate is not None],
             [c for c in finished if c.stage == FINAL and c.learning_rate is None]]
    chosen = [draw.choice(kind) for kind in kinds if kind][:sample]
    rest = [c for c in finished if c not in chosen]
    return chosen + draw.sample(rest, min(len(rest), sample - len(chosen)))


def numbers(value, path: str = "") -> dict[str, float | None]:
    """Every number (and null) of a record, by its path: `eval.glue.accuracy`, `train_loss_curve[3]`."""
    if isinstance(value, dict):
        return {k: v for key in sorted(value) if key not in NOT_RESULTS
                for k, v in numbers(value[key], f"{path}.{key}" if path else key).items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in numbers(item, f"{path}[{i}]").items()}
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return {path: value}
    return {}


def verdict(old, new) -> str:
    if old == new or (isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)):
        return "identical"
    if old is None or new is None:
        return f"differs: {old} vs {new}"
    return f"differs by {abs(new - old):.3g} ({old!r} vs {new!r})"


def compare(cell: Cell, record: dict, study: Study, scratch: Path, run_fn, echo: Callable[[str], None]) -> bool:
    """Re-run `cell` under `scratch` and print each number beside the record's; True if all identical."""
    echo(f"{cell.name}: re-running")
    kernels = {name: os.environ.get(name) for name in KERNEL_SETTINGS}
    if record.get("kernels") not in (None, kernels):
        echo(f"  note: the record was computed with kernels {record['kernels']}, this process has {kernels}")
    outcome, results = run_cell(cell, scratch, run_fn, study.threads)
    if results is None:
        echo(f"  the re-run failed: {outcome}")
        return False
    committed = numbers(record)
    rerun = numbers(make_record(cell, results, CodeState("", None, False)))
    identical = True
    for path in sorted(set(committed) | set(rerun)):
        if path not in committed or path not in rerun:
            echo(f"  {path}: only in the {'re-run' if path in rerun else 'record'}")
            identical = False
            continue
        text = verdict(committed[path], rerun[path])
        identical &= text == "identical"
        echo(f"  {path}: {committed[path]!r} → {text}")
    echo(f"{cell.name}: {'identical in every number' if identical else 'DIFFERS'} ({outcome})")
    return identical
