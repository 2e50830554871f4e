"""One run at a time in a run directory: a lock file, `<run dir>/run.lock`, holding the owner's pid, host
and slurm job (JSON). A second launch in the same directory refuses to start while the owner lives; a lock
left by a dead process on this host, or by an earlier incarnation of the same slurm job (a requeue), is
taken over. A lock from another host whose job differs cannot be checked: it is refused, naming the file to
delete. Resuming from another run dir honours its lock too (`refuse_if_in_use`): its owner is still
rotating its checkpoints."""
import json
import os
import socket
import time

from lora_one.storage import RunDirError, writing

LOCK_FILE = "run.lock"


def lock_owner() -> dict:
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if slurm_job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        slurm_job = f"{os.environ.get('SLURM_ARRAY_JOB_ID', slurm_job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": slurm_job, "since": time.time()}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale(owner: dict, me: dict) -> bool:
    """A lock nobody holds any more: its process is gone from this host, or it is this slurm job's own
    from before a requeue. A lock from another host cannot be checked, so it is never stale."""
    if owner.get("slurm_job") and owner.get("slurm_job") == me["slurm_job"]:
        return True
    return owner.get("host") == me["host"] and not process_alive(int(owner.get("pid", -1)))


def read_lock(path: str) -> dict | None:
    """The owner recorded in the lock file; {} for an unreadable one (a crash while writing it: stale)."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def in_use(run_dir: str, owner: dict) -> str:
    """Who holds a run dir, in words (the start of a RunDirError)."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
    return (f"run dir {run_dir} is in use by pid {owner.get('pid')} on {owner.get('host')} since {since} "
            f"({os.path.join(run_dir, LOCK_FILE)})")


def refuse_if_in_use(run_dir: str, why: str) -> None:
    """One RunDirError if a live run holds `run_dir` (a stale lock holds nothing), ending with `why` it matters."""
    held = read_lock(os.path.join(run_dir, LOCK_FILE))
    if held and not stale(held, lock_owner()):
        raise RunDirError(f"{in_use(run_dir, held)}: {why}")


class RunDirLock:
    """`with RunDirLock(run_dir):` holds the run directory for this process; released on exit
    (normal, exception, SystemExit); a SIGKILLed owner's lock is taken over by the next launch."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.owner = lock_owner()

    def __enter__(self) -> "RunDirLock":
        with writing(os.path.dirname(self.path)):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            while not self._create():
                held = read_lock(self.path)
                if held is None:
                    continue  # released meanwhile: try again
                if held and not stale(held, self.owner):
                    raise RunDirError(f"{in_use(os.path.dirname(self.path), held)}; use another hydra.run.dir, "
                                      "or delete the lock file if that run is gone")
                os.remove(self.path)  # stale: take it over
        return self

    def _create(self) -> bool:
        """Create the lock file atomically (O_EXCL) with this process as owner; False if it exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.owner, f)
        return True

    def __exit__(self, *exc) -> None:
        if read_lock(self.path) == self.owner:
            os.remove(self.path)


