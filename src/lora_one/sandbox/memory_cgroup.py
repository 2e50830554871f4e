"""A memory cgroup of its own for each process of a sample, where this host lets the grader make one: the sample's
memory is then bounded whatever kind it takes (heap, tmpfs pages of its /tmp and /dev/shm, page tables, kernel
memory), and the kernel's OOM killer ends that process alone. Two layouts are handled:
- cgroup v2: the grader's cgroup ("0::/path" in /proc/self/cgroup) on the cgroup2 mount, with "memory" among its
  controllers and enabled (or enable-able) for its children: `memory.max`, `memory.swap.max` 0, `pids.max`;
- cgroup v1 (hybrid hosts): the grader's cgroup in the memory hierarchy ("N:memory:/path"):
  `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` (memory + swap) where swap is accounted.
`find` tries to make (and remove) one such cgroup, once per process; where that fails (not root, no controller,
v2's rule that a cgroup with processes has no controllers for its children) there is none, and a sample is
bounded by its address-space limit and its tmpfs sizes only (lora_one.sandbox says so)."""
import contextlib
import errno
import functools
import os
import signal
import time
from dataclasses import dataclass

NAME_PREFIX = "lora_one_sandbox_"
TASKS_PER_PROCESS = 2  # v2's pids.max: a sample process and, with namespaces, its PID namespace's init
KILL_POLL_S = 0.01


@dataclass(frozen=True)
class Hierarchy:
    version: int  # 1 or 2
    parent: str  # the grader's own cgroup there, in which each sample process gets a child

    def create(self, memory_bytes: int) -> str:
        """A new empty cgroup under `parent` limited to `memory_bytes`, swap excluded; its path."""
        path = os.path.join(self.parent, f"{NAME_PREFIX}{os.getpid()}_{os.urandom(8).hex()}")
        os.mkdir(path)
        try:
            for name, value in self.limits(memory_bytes, set(os.listdir(path))):
                with open(os.path.join(path, name), "w") as f:
                    f.write(str(value))
        except BaseException:
            os.rmdir(path)
            raise
        return path

    def limits(self, memory_bytes: int, control_files: set[str]) -> list[tuple[str, int]]:
        """(file, value) in the order they must be written (v1: memory + swap may not be set below memory);
        the swap and pids files are written where the new cgroup has them (the kernel accounts swap, the
        parent enables pids for its children)."""
        if self.version == 1:
            wanted = [("memory.limit_in_bytes", memory_bytes), ("memory.memsw.limit_in_bytes", memory_bytes)]
            optional = {"memory.memsw.limit_in_bytes"}
        else:
            wanted = [("memory.max", memory_bytes), ("memory.swap.max", 0), ("pids.max", TASKS_PER_PROCESS)]
            optional = {"memory.swap.max", "pids.max"}
        return [(name, value) for name, value in wanted if name not in optional or name in control_files]


def remove(path: str, grace_s: float) -> None:
    """Remove the cgroup `path`, first killing whatever process is still in it (none, once the sample's shims
    and their namespaces are gone; this is the backstop)."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            os.rmdir(path)
            return
        except OSError as error:
            if error.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        _kill_members(path)
        time.sleep(KILL_POLL_S)


def _members(path: str) -> set[int]:
    with open(os.path.join(path, "cgroup.procs")) as f:
        return {int(pid) for pid in f.read().split()}


def _kill_members(path: str) -> None:
    """SIGKILL each process in the cgroup through a pidfd taken while its pid is listed there, so a pid that a
    process outside reuses meanwhile is never signalled."""
    for pid in _members(path):
        with contextlib.suppress(ProcessLookupError):
            pidfd = os.pidfd_open(pid)
            try:
                if pid in _members(path):  # the pidfd's process is the member, not a later holder of the pid
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)


@functools.cache
def find() -> Hierarchy | None:
    """The hierarchy in which this process may make a memory cgroup per sample process, or None."""
    with open("/proc/self/cgroup") as f:
        memberships = f.read().splitlines()
    with open("/proc/self/mountinfo") as f:
        mounts = f.read().splitlines()
    for hierarchy in candidates(memberships, mounts):
        with contextlib.suppress(OSError):
            if hierarchy.version == 2:
                _enable_controllers(hierarchy.parent)
            remove(hierarchy.create(64 * 2**20), 0.0)  # a trial: mkdir and every limit file writable
            return hierarchy
    return None


def candidates(memberships: list[str], mounts: list[str]) -> list[Hierarchy]:
    """This process's cgroup in each hierarchy with the memory controller (v2 first), from the lines of
    /proc/self/cgroup ("ID:CONTROLLERS:PATH") and /proc/self/mountinfo (mount root in field 4, mount point in
    field 5, then after " - " the filesystem type and source, super options last)."""
    found = []
    for line in memberships:
        number, controllers, path = line.split(":", 2)
        version = 2 if number == "0" and controllers == "" else 1
        if version == 1 and "memory" not in controllers.split(","):
            continue
        for mount in mounts:
            before, after = mount.split(" - ", 1)
            root, point = before.split()[3:5]
            kind, _, options = after.split()[:3]
            ours = kind == "cgroup2" if version == 2 else kind == "cgroup" and "memory" in options.split(",")
            if ours and (path + "/").startswith(root.rstrip("/") + "/"):
                parent = os.path.join(point, path[len(root.rstrip("/")):].lstrip("/"))
                if version == 1 or _has_memory_controller(parent):
                    found.append(Hierarchy(version, parent.rstrip("/")))
                break
    return sorted(found, key=lambda hierarchy: -hierarchy.version)


def _has_memory_controller(parent: str) -> bool:
    try:
        with open(os.path.join(parent, "cgroup.controllers")) as f:
            return "memory" in f.read().split()
    except OSError:
        return False


def _enable_controllers(parent: str) -> None:
    """Memory (required) and pids (where available) for the children of `parent`, unless enabled already."""
    with open(os.path.join(parent, "cgroup.controllers")) as f:
        available = f.read().split()
    with open(os.path.join(parent, "cgroup.subtree_control")) as f:
        enabled = f.read().split()
    for controller in ("memory", "pids"):
        if controller in available and controller not in enabled:
            try:
                with open(os.path.join(parent, "cgroup.subtree_control"), "w") as f:
                    f.write(f"+{controller}")
            except OSError:
                if controller == "memory":
                    raise
