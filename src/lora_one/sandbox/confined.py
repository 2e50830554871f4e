"""The sandboxed side of `lora_one.sandbox`: `python -I confined.py SPEC_JSON` confines
itself, then plays one role. It imports only the standard library (and loads libseccomp through ctypes)
and runs as a script, so nothing but this file and the interpreter's own startup executes before the
confinement.

Roles:
- "candidate": executes the untrusted program (prompt + completion), then answers calls of its
  entry point that arrive on a pipe, one at a time. Nothing it does can reach the verdict: it holds no
  descriptor of the verdict pipe and runs as another uid (root) or in another PID namespace.
- "tester": executes only trusted code (the problem's prompt, whose helpers the tests use, and its
  `check`), with `candidate` a proxy that ships the arguments to the candidate process and decodes
  its answer into plain builtin values. It writes the verdict on a pipe only it holds.
- "probe": confines itself and says so; the parent's way to learn which mode works on this machine.

Values crossing between the two go through `encode`/`decode` below: only exact builtin types (None,
bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset) are representable, so the
tester compares real builtins: an answer whose `__eq__` is always True, or a subclass of int with a
patched comparison, cannot even be sent.
"""
import ctypes
import json
import os
import resource
import signal
import stat
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 4, 28, 38
SECBIT_NOROOT_AND_LOCK = 0x3  # exec never grants capabilities to uid 0 (inside a user namespace)
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 0x1  # same number on x86-64 and arm64
KEYCTL_JOIN_SESSION_KEYRING = 1
EPERM, AF_NETLINK = 1, 16
SCMP_ACT_ALLOW, SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000  # libseccomp's seccomp.h; ERRNO is or-ed with the errno
SCMP_FLTATR_ACT_BADARCH, SCMP_CMP_EQ, NR_SCMP_ERROR = 2, 4, -1
# Denied with EPERM in every sample process: any new task (RLIMIT_NPROC = 0 means the same, but does not bind
# the host's root, which a sample is to the kernel in "user namespaces" forced as root), the kernel's shared
# objects that namespaces do not separate (keyrings; SysV IPC and POSIX message queues in "limits only"), ways
# back to capabilities (namespaces, mounts), and kernel surfaces no HumanEval program needs (io_uring, bpf,
# perf, tracing, other processes' memory, modules).
DENIED_SYSCALLS = (
    "clone", "clone3", "fork", "vfork",
    "add_key", "keyctl", "request_key",
    "shmget", "shmat", "msgget", "semget",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
    "unshare", "setns",
    "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
    "mount_setattr",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
)
SCRATCH = "/tmp"  # in the namespace modes: the only writable place, a size-capped tmpfs
SHARED_TMP = ("/var/tmp", "/dev/shm")  # bind-mounted onto the same tmpfs
DEVICES = ("null", "zero", "random", "urandom")  # the only nodes of the namespace modes' /dev
PACKAGE_DIRECTORIES = ("site-packages", "dist-packages")  # under a stdlib that is bound back: covered again
HEADER_BYTES = 8
READY = b"R"

libc = ctypes.CDLL(None, use_errno=True)


# --- values that cross between candidate and tester

def encode(value):
    """A JSON-able form of a plain builtin value; scalars stay as they are, containers are tagged."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple, set, frozenset):
        return [kind.__name__, [encode(v) for v in value]]
    if kind is dict:
        return ["dict", [[encode(k), encode(v)] for k, v in value.items()]]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind is complex:
        return ["complex", [value.real, value.imag]]
    raise TypeError(f"a {kind.__qualname__} is not a plain builtin value (only None, bool, int, float, complex, "
                    "str, bytes, list, tuple, dict, set, frozenset cross the sandbox)")


def decode(wire):
    """The inverse of `encode`; builds builtins only, whatever the input (malformed input raises)."""
    if wire is None or type(wire) in (bool, int, float, str):
        return wire
    tag, body = wire
    if tag == "dict":
        return {decode(k): decode(v) for k, v in body}
    if tag in ("list", "tuple", "set", "frozenset"):
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](decode(v) for v in body)
    if tag == "bytes":
        return bytes.fromhex(body)
    if tag == "complex":
        return complex(float(body[0]), float(body[1]))
    raise ValueError(f"unknown tag {tag!r}")


def send(fd: int, message) -> None:
    data = json.dumps(message).encode()
    data = len(data).to_bytes(HEADER_BYTES, "big") + data
    while data:
        data = data[os.write(fd, data):]


def receive(fd: int, max_bytes: int):
    size = int.from_bytes(_read_exactly(fd, HEADER_BYTES), "big")
    if size > max_bytes:
        raise ValueError(f"a message of {size} bytes (at most {max_bytes})")
    return json.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# --- confinement

def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target: str, fstype, flags: int, data=None) -> None:
    def b(s):
        return s.encode() if isinstance(s, str) else s
    _check(libc.mount(b(source), b(target), b(fstype), flags, b(data)), f"mount {target}")


def _prctl(option: int, value: int) -> None:
    _check(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


def _limit(kind: int, value: int) -> None:
    resource.setrlimit(kind, (value, value))


def _enter_namespaces(as_root: bool) -> None:
    """New mount, network, IPC, UTS and PID namespaces (and a user namespace without root). The
    process forks: the child is the new PID namespace's init and goes on; this process, the shim,
    stays outside and kills it on SIGTERM (the parent's way to end the sample: the kernel then kills
    the whole namespace). The shim never reaps it, so the pid it signals is always its own child's."""
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID | (0 if as_root else CLONE_NEWUSER)
    _check(libc.unshare(flags), "unshare")
    if not as_root:  # uid 0 inside maps to the user: mounts become possible, nothing else outside
        for name, line in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(line)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    child = os.fork()
    if child:
        signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)
        os._exit(0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _first_closed_ancestor(path: str) -> str | None:
    """The highest directory above `path` that others may not search (pyenv under /root: /root)."""
    parts = os.path.abspath(path).split(os.sep)[1:-1]
    for depth in range(1, len(parts) + 1):
        ancestor = os.sep + os.path.join(*parts[:depth])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


class _ArgumentComparison(ctypes.Structure):
    """libseccomp's struct scmp_arg_cmp: argument `arg` compared by `op` with `datum_a` (and `datum_b`)."""
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _load_libseccomp() -> ctypes.CDLL:
    """libseccomp (Debian's libseccomp2, maintained upstream) resolves syscall numbers per architecture and
    compiles the BPF program; these six of its documented functions are all the sandbox calls. Bound here
    rather than through pyseccomp (PyPI's ctypes bindings, no release since 2021), whose import runs
    `ldconfig` twice to find the libraries: 10 ms a process, which took the sandbox from 2.6x to 2.9x the
    time of a plain `python -c` (bench/bench_sandbox.py; at most 3x is the budget).
    Loaded before the confinement, while the whole filesystem is still there."""
    try:
        libseccomp = ctypes.CDLL("libseccomp.so.2")
    except OSError as error:
        raise RuntimeError(f"the seccomp filter cannot be installed ({error}); install libseccomp2") from None
    libseccomp.seccomp_init.argtypes, libseccomp.seccomp_init.restype = [ctypes.c_uint32], ctypes.c_void_p
    libseccomp.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    libseccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    libseccomp.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                                  ctypes.POINTER(_ArgumentComparison)]
    libseccomp.seccomp_load.argtypes = libseccomp.seccomp_release.argtypes = [ctypes.c_void_p]
    libseccomp.seccomp_release.restype = None
    return libseccomp


def syscall_number(libseccomp: ctypes.CDLL, name: str) -> int:
    """This architecture's number of syscall `name`."""
    number = libseccomp.seccomp_syscall_resolve_name(name.encode())
    if number == NR_SCMP_ERROR:
        raise RuntimeError(f"libseccomp does not know the syscall {name}")
    return number


def _check_seccomp(result: int, what: str) -> None:
    if result < 0:  # libseccomp returns -errno
        raise OSError(-result, f"seccomp {what}: {os.strerror(-result)}")


def _join_fresh_session_keyring(libseccomp: ctypes.CDLL) -> None:
    """An anonymous session keyring of this process alone, so no key of the grader's session is within reach
    and a key added to it would die with the sample (the filter then denies every keyring call anyway)."""
    if libc.syscall(syscall_number(libseccomp, "keyctl"), KEYCTL_JOIN_SESSION_KEYRING, None) < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"join a new session keyring: {os.strerror(errno)}")


def _denial_rules() -> list[tuple[str, list[tuple]]]:
    """(syscall, argument comparisons), each denied with EPERM: DENIED_SYSCALLS whatever their arguments, and a
    netlink socket. Nothing the sandbox does after the filter starts a task: the shim forked before it."""
    return [(name, []) for name in DENIED_SYSCALLS] + [("socket", [(0, SCMP_CMP_EQ, AF_NETLINK, 0)])]


def _install_syscall_filter(libseccomp: ctypes.CDLL) -> None:
    """Default-allow with the deny rules above: CPython and the stdlib make hundreds of different calls
    across versions and libcs, and an allow list missing one fails correct programs at random; what a
    sample may harm is bounded by the rest of the confinement, the rules close what that leaves open.
    libseccomp also sets no_new_privs (its default; set here already)."""
    context = libseccomp.seccomp_init(SCMP_ACT_ALLOW)
    if not context:
        raise RuntimeError("seccomp_init failed")
    try:  # another architecture's numbers (32-bit calls) would bypass the rules: denied as a whole
        _check_seccomp(libseccomp.seccomp_attr_set(context, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_ERRNO | EPERM),
                       "bad architecture action")
        for name, comparisons in _denial_rules():
            array = (_ArgumentComparison * len(comparisons))(*(_ArgumentComparison(*c) for c in comparisons))
            _check_seccomp(libseccomp.seccomp_rule_add_array(
                context, SCMP_ACT_ERRNO | EPERM, syscall_number(libseccomp, name), len(comparisons), array),
                f"rule for {name}")
        _check_seccomp(libseccomp.seccomp_load(context), "load")
    finally:
        libseccomp.seccomp_release(context)


def _under(path: str, directories) -> bool:
    return any(path.startswith(directory + os.sep) for directory in directories)


def _mapped_files(covered: list[str], bound: list[str]) -> set[str]:
    """The files under `covered` but not under `bound` that this process has mapped: the interpreter's
    executable, libpython when it is shared, C libraries loaded so far."""
    with open("/proc/self/maps") as maps:
        paths = {fields[5] for fields in (line.rstrip("\n").split(maxsplit=5) for line in maps) if len(fields) == 6}
    return {path for path in paths
            if _under(path, covered) and not _under(path, bound) and os.path.isfile(path)}  # not "... (deleted)"


def _cover(directory: str) -> None:
    _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,nr_inodes=256,mode=0755")


def _bind_back(handles: dict[str, int], covered: str) -> None:
    """Each kept path under `covered` (a directory or a file, opened before the cover) at its old place."""
    for path, handle in handles.items():
        if _under(path, [covered]):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if stat.S_ISDIR(os.fstat(handle).st_mode):
                os.makedirs(path, exist_ok=True)
            else:  # a file's mount point is a file
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)


def _build_dev() -> None:
    """/dev with DEVICES only (bound from the host's) and an empty shm, the mount point of the scratch tmpfs:
    no terminal, no kernel log, no GPU, no disk."""
    handles = {f"/dev/{name}": os.open(f"/dev/{name}", os.O_PATH) for name in DEVICES}
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=0755")
    _bind_back(handles, "/dev")
    for handle in handles.values():
        os.close(handle)
    os.mkdir("/dev/shm")


def _build_filesystem(limits: dict, owner: int, hide: list[str], stdlib: list[str]) -> None:
    """Everything read-only; /tmp, /var/tmp, /dev/shm one tmpfs of `disk_mb` and `max_files` owned by `owner`;
    /dev with DEVICES only; a fresh /proc of the new PID namespace. Each directory in `hide`, and the highest
    directory above the stdlib that others cannot search (pyenv's /root), is covered by an empty tmpfs, with
    only what the interpreter needs bound back: the `stdlib` directories (lib-dynload included) for lazy
    imports, and the files this process maps from there (the executable, libpython); site-packages under a
    stdlib bound back is covered again. Nothing else under a covered directory is visible."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    hide = sorted(set(hide) | {a for a in map(_first_closed_ancestor, stdlib) if a})
    kept = sorted({d for d in stdlib if _under(d, hide)} | _mapped_files(hide, stdlib))
    handles = {path: os.open(path, os.O_PATH) for path in kept}
    for covered in filter(os.path.isdir, hide):
        _cover(covered)
        _bind_back(handles, covered)
    for handle in handles.values():
        os.close(handle)
    for packages in (os.path.join(d, name) for d in stdlib if d in kept for name in PACKAGE_DIRECTORIES):
        if os.path.isdir(packages):
            _cover(packages)
    _build_dev()
    attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_RDONLY, 0, 0, 0)
    _check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, attr, ctypes.sizeof(attr)), "read-only /")
    _mount("tmpfs", SCRATCH, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={limits['disk_mb']}m,nr_inodes={limits['max_files']},mode=0700,uid={owner},gid={owner}")
    for path in SHARED_TMP:
        if os.path.isdir(path):
            _mount(SCRATCH, path, None, MS_BIND)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _drop_capabilities() -> None:
    """Uid 0 of a user namespace keeps no capability, and exec gives none back."""
    _prctl(PR_SET_SECUREBITS, SECBIT_NOROOT_AND_LOCK)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    _check(libc.capset(header, (ctypes.c_uint32 * 6)()), "capset")


def _become(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _join_memory_cgroup(procs: str) -> None:
    """Move this process into the memory cgroup the parent made for it (`procs`: its cgroup.procs; "0" is the
    writer). First of all, while this process is still alone and privileged: every process it starts later
    (the namespace's init) is born inside, so nothing of the sample runs outside the limit."""
    with open(procs, "w") as f:
        f.write("0")


def confine(spec: dict, libseccomp: ctypes.CDLL) -> None:
    """Apply the mode's confinement to this process (see lora_one.sandbox for what each gives); the syscall
    filter last, so that nothing the sample runs escapes it and the setup above may still use what it denies."""
    limits, mode, uid = spec["limits"], spec["mode"], spec["uid"]
    if spec["memory_cgroup_procs"]:
        _join_memory_cgroup(spec["memory_cgroup_procs"])
    if mode == "limits only":
        os.chdir(spec["workdir"])
    else:
        as_root = mode == "namespaces"
        _enter_namespaces(as_root)
        _build_filesystem(limits, uid if as_root else 0, spec["hide"], spec["stdlib"])
        os.chdir(SCRATCH)
    memory = limits["memory_mb"] * 2**20
    _limit(resource.RLIMIT_AS, memory)
    _limit(resource.RLIMIT_DATA, memory)
    _limit(resource.RLIMIT_CPU, int(limits["timeout_s"]) + 1)
    _limit(resource.RLIMIT_FSIZE, limits["disk_mb"] * 2**20)
    _limit(resource.RLIMIT_NOFILE, 64)
    _limit(resource.RLIMIT_CORE, 0)
    _join_fresh_session_keyring(libseccomp)
    if uid is not None:
        _become(uid)
    elif mode == "user namespaces":
        _drop_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)  # no ptrace, no /proc/<pid>/mem, even for the same uid
    _limit(resource.RLIMIT_NPROC, 0)  # no fork, no thread: this uid may have no further task
    _install_syscall_filter(libseccomp)


def _check_stdlib_readable() -> None:
    """Lazy imports (`datetime.strptime` imports `_strptime`) need the stdlib after the drop."""
    stdlib = os.path.dirname(os.__file__)
    try:
        os.listdir(stdlib)
    except PermissionError:
        raise PermissionError(f"the standard library {stdlib} is not readable by the sandbox's uid: use a Python "
                              "that other users can read, or a machine that allows namespaces") from None


def _refuse_sockets() -> None:
    """Without a network namespace ("limits only"), Python's socket module at least refuses."""
    import _socket
    import socket

    def refused(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    for module in (socket, _socket):
        module.socket = refused
    socket.create_connection = socket.socketpair = refused


# --- roles

def run_candidate(spec: dict, program: str) -> None:
    """Tell the tester the sandbox is up, run the untrusted program, then serve calls of its entry point."""
    os.write(spec["answer_fd"], READY)
    namespace = {"__name__": "__main__"}
    exec(compile(program, "program.py", "exec"), namespace)
    function = namespace[spec["entry_point"]]
    while True:
        try:
            args, kwargs = receive(spec["call_fd"], spec["max_message_bytes"])
        except EOFError:
            return
        try:
            answer = ["returned", encode(function(*decode(args), **decode(kwargs)))]
        except Exception as error:  # the tester's check sees it raised, as it would in-process
            answer = ["raised", "".join(traceback.format_exception_only(type(error), error)).strip()[-1000:]]
        send(spec["answer_fd"], answer)


class CandidateFailed(Exception):
    """Raised inside `check` where the candidate raised, ended, or answered with a non-plain value."""


def candidate_proxy(spec: dict):
    call_fd, answer_fd, max_bytes = spec["call_fd"], spec["answer_fd"], spec["max_message_bytes"]

    def candidate(*args, **kwargs):
        send(call_fd, [encode(list(args)), encode(kwargs)])
        try:
            outcome, value = receive(answer_fd, max_bytes)
        except EOFError:
            raise CandidateFailed("the candidate's process ended before answering") from None
        if outcome != "returned":
            raise CandidateFailed(f"the candidate raised {value}")
        return decode(value)

    return candidate


def run_tester(spec: dict, trusted: dict) -> dict:
    """The verdict: passed only if `check(candidate)` returned normally, here, in trusted code."""
    try:
        if os.read(spec["answer_fd"], 1) != READY:
            return {"setup_error": "the candidate's process did not start"}
        namespace = {"__name__": "__main__"}
        exec(compile(trusted["prelude"], "prompt", "exec"), namespace)
        namespace[spec["entry_point"]] = candidate = candidate_proxy(spec)  # some tests call it by name
        exec(compile(trusted["test"], "test", "exec"), namespace)
        namespace["check"](candidate)
    except BaseException as error:  # SystemExit or KeyboardInterrupt from the test fail the sample too
        return {"passed": False, "detail": "".join(traceback.format_exception(error))[-2000:]}
    return {"passed": True}


def main(spec: dict) -> None:
    payload = json.loads(sys.stdin.buffer.read())
    try:
        confine(spec, _load_libseccomp())
        _check_stdlib_readable()
        if spec["mode"] == "limits only":
            _refuse_sockets()
    except Exception as error:
        if spec["role"] != "candidate":
            send(spec["verdict_fd"], {"setup_error": f"{type(error).__name__}: {error}"})
        raise
    if spec["role"] == "probe":
        send(spec["verdict_fd"], {"passed": True})
    elif spec["role"] == "tester":
        send(spec["verdict_fd"], run_tester(spec, payload))
    else:
        run_candidate(spec, payload["program"])


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
