"""What a run shows on the console: the progress of its long stages, and no third-party noise.

Every stage that can take more than a few seconds (the held-out loss passes, the init's gradient and
factorisations, training, the evaluators' batches) reports through `progress()`, which decides once
how a stage is shown:

- on a terminal (stderr is a tty): a tqdm bar;
- elsewhere (a slurm .out file, a pipe, captured output) a redrawn bar piles up as one unreadable
  line, so the same tqdm writes log lines instead: none for a stage done within LOG_INTERVAL_S, then
  one at most every LOG_INTERVAL_S while the stage advances, and one at its end (count, elapsed
  time, ETA, rate).

`configure_console(verbose)` runs once per run: unless `verbose`, the deprecation warnings the
libraries address to their developers, not to someone running an experiment, are hidden, and so are
transformers' own bars where they cannot redraw.
"""
import contextlib
import logging
import sys
import threading
import warnings
from weakref import WeakSet

from tqdm import tqdm
from transformers.utils import logging as transformers_logging

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0  # away from a terminal: at most one progress line per stage this often
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LIBRARIES = ("transformers", "peft", "accelerate", "torch")  # whose deprecation warnings a run hides


def on_terminal() -> bool:
    return sys.stderr.isatty()


class LogLines:
    """A file for tqdm that logs the status lines written to it: tqdm's carriage returns and closing
    newline carry nothing, and neither does a line whose count is the last one's (closing repeats
    the last line, with the rate averaged anew)."""

    def __init__(self):
        self.last_count = ""

    def write(self, text: str) -> int:
        line = text.strip()
        count = line.partition(" [")[0]  # "<desc>: <n>/<total> <unit>"
        if line and count != self.last_count:
            log.info("%s", line)
            self.last_count = count
        return len(text)

    def flush(self) -> None:
        pass


class LoggedProgress(tqdm):
    """A tqdm whose status goes to LogLines. It keeps instances of its own, so it holds no line of the
    screen: a library's bar drawn meanwhile (transformers' de-quantisation) takes the first line, not
    the second, and writes no cursor moves into a log file."""

    _instances = WeakSet()


def progress(iterable=None, *, desc: str, total: int | None = None, unit: str = "it", show: bool = True,
             **options) -> tqdm:
    """A tqdm over `iterable` (or advanced by hand with `update`, `total` of them) for the stage `desc`:
    a bar on a terminal, rate-limited log lines elsewhere, nothing when `show` is false (every process
    but the main one). `options` go to tqdm (e.g. `initial`)."""
    if not show:
        return tqdm(iterable, total=total, disable=True)
    if on_terminal():
        return tqdm(iterable, desc=desc, total=total, unit=unit, **options)
    # miniters=1: the clock is read at every update, so a stage that slows down still reports on time
    as_log = dict(file=LogLines(), bar_format=LOG_FORMAT, mininterval=LOG_INTERVAL_S, delay=LOG_INTERVAL_S, miniters=1)
    return LoggedProgress(iterable, desc=desc, total=total, unit=unit, **{**as_log, **options})


@contextlib.contextmanager
def elapsed_time(desc: str, show: bool = True):
    """Around one long call that reports nothing itself (a library's): the time it has taken so far,
    counted each second, shown as any stage's progress."""
    seconds = progress(desc=desc, unit="s", show=show, bar_format="{desc}: {elapsed} so far")
    done = threading.Event()

    def tick() -> None:
        while not done.wait(1.0):
            seconds.update()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        seconds.close()


def configure_console(verbose: bool) -> None:
    """Unless `verbose`: hide the libraries' FutureWarning/DeprecationWarning (e.g. PEFT reading
    transformers' deprecated `is_gradient_checkpointing` at every wrap), and, away from a terminal,
    transformers' and the hub's progress bars (a model's "Loading weights" redraws), and
    lm-evaluation-harness's warnings about the settings it defaults (its errors still show). `verbose`
    leaves all of them as the libraries show them."""
    if verbose:
        return
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    for library in LIBRARIES:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=library)
    if not on_terminal():
        transformers_logging.disable_progress_bar()
