"""Writing under a run directory: failures in one line naming the path and the cause (a full disk said
as such, even by writers that lose the errno), JSON that is always complete and strict, and a Hydra callback
that checks the run dir can be written before Hydra writes there."""
import contextlib
import errno
import json
import math
import os
import re
import shutil
import sys

from hydra.experimental.callback import Callback

LOW_SPACE_BYTES = 1 << 20  # a write that fails with less free space than this failed for lack of it
DISK_FULL = "disk full (ENOSPC: no space left on device)"


class RunDirError(RuntimeError):
    """The run directory cannot be used (not writable, disk full, locked by another run): one line."""


def os_error_cause(err: BaseException, directory: str) -> str:
    """What went wrong, in words: the errno's name and text; a full disk is reported as such even by
    writers that lose the errno (torch.save, safetensors), from the free space left."""
    code = getattr(err, "errno", None) or lost_errno(err)
    lost_errno_disk_full = code is None and ("No space left on device" in str(err)
                                             or free_bytes(directory) < LOW_SPACE_BYTES)
    if code == errno.ENOSPC or lost_errno_disk_full:
        return DISK_FULL
    if code == errno.EDQUOT:
        return "disk quota exceeded (EDQUOT)"
    if code is not None:
        return f"{os.strerror(code).lower()} ({errno.errorcode.get(code, code)})"
    return str(err)


def lost_errno(err: BaseException) -> int | None:
    """The errno a Rust writer (safetensors) keeps only in its message: "… I/O error: … (os error 1)"."""
    match = re.search(r"\(os error (\d+)\)", str(err))
    return int(match.group(1)) if match else None


def free_bytes(path: str) -> int:
    """Free bytes of the filesystem holding `path` (or its nearest existing parent)."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path or ".").free
    except OSError:
        return LOW_SPACE_BYTES  # unknown: not evidence of a full disk


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def storage_failure(err: BaseException, run_dir: str) -> str | None:
    """One line for an error of the storage under a run (a full disk, a read-only or forbidden path):
    the path and the cause; None for any other error (it keeps its traceback)."""
    if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
        return f"{err.filename or run_dir}: {os_error_cause(err, run_dir)}"
    if os_error_cause(err, run_dir) == DISK_FULL:  # torch.save, safetensors: the errno is lost
        return f"a write under {run_dir} failed: {DISK_FULL}"
    return None


@contextlib.contextmanager
def writing(path: str):
    """Turn a failed write under `path` into one RunDirError naming the file (OSError's own name of it
    when it has one) and the cause. Errors that are not write failures pass through unchanged."""
    try:
        yield
    except OSError as err:
        raise RunDirError(f"cannot write {err.filename or path}: {os_error_cause(err, path)}") from err
    except Exception as err:  # torch.save, safetensors: the errno is lost, or only in the message
        if isinstance(err, RunDirError) or (lost_errno(err) is None and os_error_cause(err, path) != DISK_FULL):
            raise
        raise RunDirError(f"cannot write {path}: {os_error_cause(err, path)}") from err


def finite_or_null(value):
    """The payload with every NaN/±inf float replaced by None (JSON null): JSON has no such numbers
    and `json.dump` would write bare `NaN`, which strict readers reject."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def write_json(path: str, payload: dict, indent: int = 2) -> None:
    """Strict JSON (non-finite floats → null), written via a temporary file and a rename, so a crash
    never leaves a truncated file; a failed write is a RunDirError naming the path."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(finite_or_null(payload), f, indent=indent, allow_nan=False)
        os.replace(tmp, path)
    except OSError as err:  # named by the file meant, not the temporary one, which is not left behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise RunDirError(f"cannot write {path}: {os_error_cause(err, path)}") from err


def check_writable(directory: str) -> None:
    """Create `directory` and write a probe file in it, or one RunDirError naming it and the cause."""
    probe = os.path.join(directory, f".write-probe-{os.getpid()}")
    with writing(directory):
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)


class CheckRunDir(Callback):
    """Hydra callback (conf/config.yaml): before Hydra creates the run (or sweep) directory, check it
    can be written; if not, one line `error: …` naming it and the cause, exit status 1, no traceback."""

    def on_run_start(self, config, **kwargs) -> None:
        self.check(str(config.hydra.run.dir))

    def on_multirun_start(self, config, **kwargs) -> None:
        self.check(str(config.hydra.sweep.dir))

    @staticmethod
    def check(directory: str) -> None:
        try:
            check_writable(directory)
        except RunDirError as err:
            sys.exit(f"error: {err}")
