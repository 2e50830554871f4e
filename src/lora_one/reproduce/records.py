"""A study's committed data: one small JSON record per finished cell under `docs/reproduction/cells/`
(`<task>/<stage>/<method>/lr=<lr>,seed=<seed>.json`), holding what the report needs and nothing it
could not show (no weights, no prediction files): the overrides, the code state that computed it,
the held-out losses and curves, the benchmark metrics with per-class counts, the config digest and
the provenance. The report is built from these files alone, so a fresh clone regenerates it; a
cell whose record exists with the same overrides and the study's code state is finished.

The code state is a digest of every file a cell computes with: run_exp.py, conf/ and the package
except `reproduce/` (which plans cells and writes reports, but computes no number). Its commit is
recorded beside it; a study refuses to start while those files differ from the commit (`dirty`), so
the commit alone re-creates the code."""
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lora_one import ConfigError
from lora_one.reproduce import stats
from lora_one.reproduce.plan import Cell

COMPUTE_PATHS = ("run_exp.py", "conf", "src/lora_one")
NOT_COMPUTE = ("src/lora_one/reproduce/",)
# What a record keeps of results.json: the report's inputs, and what a reviewer checks a number against.
RESULT_KEYS = ("config_digest", "init_method", "trainable_params", "total_params", "eval_loss_base",
               "eval_loss_after_init", "eval_loss", "eval_loss_curve", "train_loss_curve", "final_train_loss", "steps",
               "train_time_s", "init_time_s", "eval", "provenance")


@dataclass(frozen=True)
class CodeState:
    digest: str        # sha256 (16 hex) of the compute files' paths and contents
    commit: str | None  # HEAD when it was read
    dirty: bool         # the compute files differ from HEAD (uncommitted changes)

    def as_dict(self) -> dict:
        return {"digest": self.digest, "commit": self.commit, "dirty": self.dirty}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def compute_files(repo: Path) -> list[str]:
    """The files a cell computes with: tracked, or new and not ignored, under COMPUTE_PATHS."""
    listed = git(repo, "ls-files", "--cached", "--others", "--exclude-standard", "--", *COMPUTE_PATHS).splitlines()
    return sorted(p for p in set(listed) if not p.startswith(NOT_COMPUTE) and (repo / p).is_file())


def code_state(repo: Path) -> CodeState:
    digest = hashlib.sha256()
    for path in compute_files(repo):
        digest.update(path.encode() + b"\0" + (repo / path).read_bytes() + b"\0")
    commit = git(repo, "rev-parse", "HEAD").strip()
    dirty = bool(git(repo, "status", "--porcelain", "--", *COMPUTE_PATHS,
                     *(f":(exclude){p}" for p in NOT_COMPUTE)).strip())
    return CodeState(digest.hexdigest()[:16], commit, dirty)


def record_path(records: Path, cell: Cell) -> Path:
    return records / f"{cell.path}.json"


KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")  # scripts/reproduce.py pins them


def make_record(cell: Cell, results: dict, code: CodeState) -> dict:
    kept = {key: results.get(key) for key in RESULT_KEYS}
    kernels = {name: os.environ.get(name) for name in KERNEL_SETTINGS}
    return {"cell": cell.name, "overrides": list(cell.overrides), "code": code.as_dict(), "kernels": kernels, **kept}


def dumps(record: dict) -> str:
    """One stable text per record (sorted keys), so rewriting an unchanged record changes no byte."""
    return json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n"


def write_record(records: Path, cell: Cell, results: dict, code: CodeState) -> Path:
    path = record_path(records, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(dumps(make_record(cell, results, code)))
    partial.replace(path)  # atomic: a record is whole or absent
    return path


def read_record(records: Path, cell: Cell, digest: str | None = None) -> dict | None:
    """The cell's record, None unless it exists with the cell's overrides (and, given one, this code digest)."""
    path = record_path(records, cell)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        overrides, recorded_digest = record["overrides"], record["code"]["digest"]
    except (ValueError, KeyError, TypeError) as err:  # a merge conflict, a truncated or hand-edited file
        raise ConfigError(f"{path} is not a study record ({type(err).__name__}: {err}); restore the committed one "
                          f"with `git checkout -- {path}`, or delete it to re-run the cell") from err
    return record if overrides == list(cell.overrides) and digest in (None, recorded_digest) else None


def commit_record(repo: Path, path: Path, cell: Cell, attempts: int = 5) -> None:
    """Commit one finished cell's record alone (nothing else staged is touched), so a study larger
    than one sitting resumes from the repository on another machine. Another git process holding the
    index lock (a run's provenance reads `git status`) is waited out."""
    relative = str(path.resolve().relative_to(repo.resolve()))
    for attempt in range(attempts):
        try:
            git(repo, "add", "--", relative)
            git(repo, "commit", "--quiet", "--only", "-m", f"study: {cell.name}", "--", relative)
            return
        except subprocess.CalledProcessError:
            if attempt == attempts - 1:
                raise
            time.sleep(2 ** attempt)


# --- what a record says


def metric_name(record: dict, benchmark: str) -> str:
    return record["eval"][benchmark].get("main_metric", "accuracy")


def metric(benchmark: str) -> Callable[[dict], float]:
    """A record → its benchmark's headline metric in percent (GLUE's main_metric per task, else accuracy)."""
    return lambda record: 100 * record["eval"][benchmark][metric_name(record, benchmark)]


def held_out(record: dict) -> float | None:
    return record.get("eval_loss")


def degenerate(record: dict, benchmark: str) -> bool:
    counts = record["eval"][benchmark].get("predicted_counts")
    return bool(counts) and stats.is_degenerate(counts)


def wall_seconds(record: dict) -> float:
    times = record["provenance"]
    start, end = datetime.datetime.fromisoformat(times["start"]), datetime.datetime.fromisoformat(times["end"])
    return (end - start).total_seconds()


def curve(record: dict) -> list[tuple[int, float]]:
    return [(step, loss) for step, loss in record.get("eval_loss_curve") or [] if loss is not None]


def held_out_by_step(records: list[dict]) -> list[tuple[int, list[float]]]:
    """(step, the runs' held-out losses at it) for every step some run evaluated, in step order."""
    by_step: dict[int, list[float]] = {}
    for record in records:
        for step, loss in curve(record):
            by_step.setdefault(step, []).append(loss)
    return sorted(by_step.items())


def mean_curve(records: list[dict]) -> list[tuple[int, float]]:
    """(step, mean held-out loss over the runs that evaluated it)."""
    return [(step, statistics.fmean(losses)) for step, losses in held_out_by_step(records)]
