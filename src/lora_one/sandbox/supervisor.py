"""The parent side of the sandbox (lora_one.sandbox says what it guarantees): start the candidate and the tester
as `python -I confined.py SPEC_JSON`, each confined by the mode that works here, read the verdict and the output
on pipes it created, and end every process of the sample at the deadline."""
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

from lora_one.sandbox import confined, memory_cgroup

CHILD_SCRIPT = os.path.abspath(confined.__file__)  # launched as a file (`python -I`): lora_one is not imported there
MODES = ("namespaces", "user namespaces", "limits only")
MODE_VARIABLE = "LORA_ONE_SANDBOX_MODE"
UID_BASE, UID_SLOTS = 1_900_000_000, 4096  # above every ordinary and subordinate-id range
UID_LOCKS = "/run/lora_one_sandbox_uids"
# The directories every user may write on a Debian/Ubuntu host ("limits only" as root: a sample's files there are
# removed afterwards; a file left in one would carry state to the next sample, e.g. /run/lock)
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
READ_CHUNK = 1 << 16
VERDICT_MAX_BYTES = 1 << 16
SHIM_GRACE_S = 5.0  # a shim kills its namespace's init at once; only a stalled machine takes longer
# What the namespace modes bind back of an interpreter under a directory others cannot search (with the files
# the child maps from there): the stdlib for lazy imports, and its C extension modules (lib-dynload)
STDLIB = sorted({os.path.realpath(sysconfig.get_path(name)) for name in ("stdlib", "platstdlib")})


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (never a verdict on a program)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock of the whole sample
    memory_mb: int = 1024  # address space of each process; with a memory cgroup also all memory it charges
    disk_mb: int = 16  # all writable space together (namespaces); the largest file (limits only)
    max_files: int = 256  # files and directories in the private tmpfs (namespaces)
    output_kb: int = 16  # how much of the programs' output tail is kept
    max_message_mb: int = 16  # one call's arguments or answer


@dataclass(frozen=True)
class Sample:
    program: str  # untrusted: the prompt and the model's completion
    test: str  # trusted: defines check(candidate)
    entry_point: str  # the function of `program` that check receives
    prelude: str = ""  # trusted code run before the test (the prompt: helpers some tests call)


@dataclass(frozen=True)
class Outcome:
    status: str  # "passed" | "failed" | "timed out"
    detail: str  # why it failed, from the tester (a traceback of check)
    output_tail: str  # the end of what both processes printed

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def run_sample(sample: Sample, limits: Limits = Limits()) -> Outcome:
    """Run `check(entry_point)` of `sample` confined as described above."""
    with _Run(sandbox_mode(), limits) as run:
        message, tail, timed_out = run.verdict(
            {"program": sample.program}, {"prelude": sample.prelude, "test": sample.test}, sample.entry_point)
    if timed_out:
        return Outcome("timed out", "", tail)
    if message is None:
        return Outcome("failed", "the tester ended without a verdict", tail)
    if "setup_error" in message:
        raise SandboxError(f"sandbox setup failed ({run.mode}): {message['setup_error']}\n{tail}")
    return Outcome("passed" if message["passed"] is True else "failed", message.get("detail", ""), tail)


_modes: dict = {}
_modes_lock = threading.Lock()


def sandbox_mode() -> str:
    """The strongest mode that works on this machine (probed once), or the one LORA_ONE_SANDBOX_MODE names."""
    forced = os.environ.get(MODE_VARIABLE)
    if forced and forced not in MODES:
        raise SandboxError(f"{MODE_VARIABLE}={forced!r} is not one of {list(MODES)}")
    with _modes_lock:
        if forced not in _modes:
            strongest = "namespaces" if os.geteuid() == 0 else "user namespaces"
            failures = {}
            for mode in [forced] if forced else [strongest, "limits only"]:
                why = _probe(mode)
                if why is None:
                    _modes[forced] = mode
                    break
                failures[mode] = why
            else:
                raise SandboxError(_no_mode_works(failures, forced))
        return _modes[forced]


def sandbox_capabilities() -> dict:
    """What confines a sample here: the mode (`sandbox_mode`), and what bounds its memory: "cgroup v1" or
    "cgroup v2" (a memory cgroup of `memory_mb` per sample process, lora_one.sandbox.memory_cgroup), or
    "rlimits only" (no memory cgroup can be made here: the address-space limit and the tmpfs sizes)."""
    hierarchy = memory_cgroup.find()
    return {"mode": sandbox_mode(), "memory": f"cgroup v{hierarchy.version}" if hierarchy else "rlimits only"}


def _probe(mode: str) -> str | None:
    """Why `mode` cannot confine a program here (its setup error, or the end of what the probe printed),
    or None when it works."""
    with _Run(mode, Limits(timeout_s=30.0)) as run:
        message, tail, _ = run.verdict(None, {}, "")
    if message == {"passed": True}:
        return None
    return (message or {}).get("setup_error") or tail.strip()[-300:] or "the probe ended without a word"


def _no_mode_works(failures: dict[str, str], forced: str | None) -> str:
    """The modes tried (only the forced one, when LORA_ONE_SANDBOX_MODE names it) and why each failed."""
    reasons = "; ".join(f"{mode!r} failed: {why}" for mode, why in failures.items())
    if forced:
        return (f"{MODE_VARIABLE}={forced!r} forces a mode that does not work on this machine (no other tried): "
                f"{reasons}")
    return f"no sandbox mode works on this machine; tried {' and '.join(map(repr, failures))}: {reasons}"


class _Run:
    """The processes, pipes, uids and directories of one sample, all released on exit."""

    def __init__(self, mode: str, limits: Limits):
        self.mode, self.limits = mode, limits
        self.stack = contextlib.ExitStack()
        self.processes: list[subprocess.Popen] = []
        self.uids: list[int] = []
        self.fds: set[int] = set()  # open here; closed exactly once (numbers are reused by other threads)
        self.stack.callback(lambda: [self.close(fd) for fd in list(self.fds)])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.mode != "limits only":
            for process in self.processes:  # its shim kills the namespace's init, the kernel the rest
                os.kill(process.pid, signal.SIGTERM)  # not reaped yet: the pid is still this child's
            for process in self.processes:
                _wait_without_reaping(process.pid, SHIM_GRACE_S)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if self.mode == "limits only":
            for uid in self.uids:
                _kill_every_process_of(uid)
                _remove_files_of(uid)
        self.stack.close()

    def pipe(self) -> tuple[int, int]:
        ends = os.pipe()
        self.fds.update(ends)
        return ends

    def close(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.remove(fd)
            os.close(fd)

    def verdict(self, candidate_input: dict | None, tester_input: dict, entry_point: str):
        """Start the tester (and the candidate, unless probing); (verdict message, output tail, timed out)."""
        call_r, call_w = self.pipe()
        answer_r, answer_w = self.pipe()
        verdict_r, verdict_w = self.pipe()
        output_r, output_w = self.pipe()
        common = {"mode": self.mode, "limits": asdict(self.limits),
                  "entry_point": entry_point, "max_message_bytes": self.limits.max_message_mb * 2**20,
                  "hide": _home_to_hide(self.mode), "stdlib": STDLIB}
        deadline = time.monotonic() + self.limits.timeout_s
        if candidate_input is not None:
            self.spawn({**common, "role": "candidate", "call_fd": call_r, "answer_fd": answer_w},
                       candidate_input, output_w)
        role = "tester" if candidate_input is not None else "probe"
        self.spawn({**common, "role": role, "call_fd": call_w, "answer_fd": answer_r, "verdict_fd": verdict_w},
                   tester_input, output_w)
        for fd in (call_r, call_w, answer_r, answer_w, verdict_w, output_w):
            self.close(fd)  # the children hold their ends; EOF now means they are gone
        return self.collect(verdict_r, output_r, deadline)

    def spawn(self, spec: dict, payload: dict, output_fd: int) -> None:
        uid = self.claim_uid() if os.geteuid() == 0 and self.mode != "user namespaces" else None
        home = confined.SCRATCH if self.mode != "limits only" else self.private_dir(uid)
        cgroup = self.new_memory_cgroup()
        spec = {**spec, "uid": uid, "workdir": home,
                "memory_cgroup_procs": os.path.join(cgroup, "cgroup.procs") if cgroup else None}
        payload_fd = os.memfd_create("sandbox-input")
        self.fds.add(payload_fd)
        data = json.dumps(payload).encode()
        while data:
            data = data[os.write(payload_fd, data):]
        os.lseek(payload_fd, 0, os.SEEK_SET)
        passed = tuple(spec[key] for key in ("call_fd", "answer_fd", "verdict_fd") if key in spec)
        self.processes.append(subprocess.Popen(
            [sys.executable, "-I", "-B", "-u", CHILD_SCRIPT, json.dumps(spec)], cwd="/", stdin=payload_fd,
            stdout=output_fd, stderr=output_fd, pass_fds=passed, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8"}))
        self.close(payload_fd)

    def claim_uid(self) -> int:
        """A uid no other running sample (of any process on this machine) holds, until this run ends."""
        os.makedirs(UID_LOCKS, mode=0o700, exist_ok=True)
        info = os.lstat(UID_LOCKS)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
            raise SandboxError(f"{UID_LOCKS} must be a directory owned by root with mode 0700")
        for uid in range(UID_BASE, UID_BASE + UID_SLOTS):
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(os.path.join(UID_LOCKS, str(uid)), flags, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self.stack.callback(os.close, fd)  # released last: after its processes are dead
            self.uids.append(uid)
            return uid
        raise SandboxError(f"all {UID_SLOTS} sandbox uids are in use")

    def new_memory_cgroup(self) -> str | None:
        """A memory cgroup of `memory_mb` for one process of the sample (which joins it itself, first thing),
        removed once the sample's processes are gone; None where the host allows none."""
        hierarchy = memory_cgroup.find()
        if hierarchy is None:
            return None
        path = hierarchy.create(self.limits.memory_mb * 2**20)
        self.stack.callback(memory_cgroup.remove, path, SHIM_GRACE_S)
        return path

    def private_dir(self, uid: int | None) -> str:
        path = tempfile.mkdtemp(prefix="lora_one_sandbox_")  # mode 0700
        if uid is not None:
            os.chown(path, uid, uid)
        self.stack.callback(shutil.rmtree, path, True)  # never follows links
        return path

    def collect(self, verdict_r: int, output_r: int, deadline: float):
        """Read the pipes until the tester is gone or the deadline: the verdict (capped) and the
        output's tail (the rest discarded)."""
        verdict, tail = b"", b""
        keep = self.limits.output_kb * 1024
        poller = select.poll()
        for fd in (verdict_r, output_r):
            poller.register(fd, select.POLLIN)
        verdict_open, timed_out = True, False
        while verdict_open:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for fd, _ in poller.poll(remaining * 1000):
                chunk = os.read(fd, READ_CHUNK)
                if not chunk or (fd == verdict_r and len(verdict) + len(chunk) > VERDICT_MAX_BYTES):
                    poller.unregister(fd)
                    verdict_open = verdict_open and fd != verdict_r
                elif fd == output_r:
                    tail = (tail + chunk)[-keep:]
                else:
                    verdict += chunk
        os.set_blocking(output_r, False)  # what was printed before the verdict, still in the pipe
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(output_r, READ_CHUNK):
                tail = (tail + chunk)[-keep:]
        return _parse_verdict(verdict), tail.decode(errors="replace"), timed_out


def _wait_without_reaping(pid: int, seconds: float) -> None:
    """Until our child `pid` ends (or `seconds`), leaving it unreaped so its pid and group stay ours."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(seconds * 1000)
    finally:
        os.close(pidfd)


def _home_to_hide(mode: str) -> list[str]:
    """Without root the sandbox's uid is the user's own: hide the home, the likeliest place of secrets."""
    home = os.path.realpath(os.path.expanduser("~"))
    return [home] if mode == "user namespaces" and home != "/" and os.path.isdir(home) else []


def _parse_verdict(data: bytes) -> dict | None:
    header = confined.HEADER_BYTES
    if len(data) < header or len(data) != header + int.from_bytes(data[:header], "big"):
        return None
    return json.loads(data[header:])


def _kill_every_process_of(uid: int) -> None:
    """kill(-1) as `uid`: every process of that uid, wherever it went (setsid, reparenting)."""
    child = os.fork()
    if child == 0:
        try:
            os.setresuid(uid, uid, uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def _remove_files_of(uid: int) -> None:
    """What `uid` left in the shared temporary directories (its processes are dead, so no race)."""
    for top in SHARED_TMP:
        for parent, dirs, files in os.walk(top, topdown=False):
            for name in dirs + files:
                path = os.path.join(parent, name)
                with contextlib.suppress(FileNotFoundError):
                    info = os.lstat(path)
                    if info.st_uid == uid:
                        (os.rmdir if stat.S_ISDIR(info.st_mode) else os.unlink)(path)
