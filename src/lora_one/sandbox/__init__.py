"""A process sandbox that runs one HumanEval sample (untrusted model-written code against its trusted tests) so that the
code can neither fake its verdict nor touch anything outside its sample. Threat model: the program
is hostile Python, written to pass wrongly, read secrets, or harm the host or other samples.

Two sandboxed processes per sample (the child side is `confined.py`, a stdlib-only script):
- the *candidate* runs the untrusted program (prompt + completion) and then answers calls of its
  entry point over a pipe;
- the *tester* runs only trusted code: the prompt (for helpers such as `poly` that some tests call)
  and the problem's `check`, whose `candidate` is a proxy for those calls. Arguments and answers
  cross as data holding exact builtin types only, so the tester compares real ints, lists, strs...
Why the verdict cannot be forged: it is one message the tester writes, after `check(candidate)`
returned normally, on a pipe the parent created and only the tester holds. The candidate's process
never has that descriptor, never executes in the tester, and cannot ptrace or read the tester's
memory (the tester is not dumpable; as root it also has another uid, with namespaces another PID
namespace, so no signal reaches it either; in "limits only" without root a kill only fails the
sample). Its exit status is ignored: `sys.exit(0)`, `os._exit(0)`, `atexit`, a replaced
`sys.excepthook` only end or hide its own process, and the tester's next call then fails. An
answer with `__eq__` always True cannot be sent, and one crafted on the wire decodes to builtins.
What remains is what any test of a black box allows: answers that are right for the inputs tested.

The parent reads only pipes it created (output capped: it keeps a tail and discards the rest), never
a file the program could have replaced by a link or a FIFO; the programs get their input on
anonymous memory files. Wall clock: at `timeout_s` (or once the verdict is in) the parent ends the
sample: with namespaces each shim kills its namespace's init and the kernel the rest; otherwise the
process group, and as root every process of the sample's uids.

Modes (`sandbox_mode()`: the first that works here; `LORA_ONE_SANDBOX_MODE` forces one):
- "namespaces" (root): each process gets its own uid from a high range (locked per sample, so no
  two running samples share one), new mount/PID/network/IPC/UTS namespaces, the whole filesystem
  read-only, /tmp, /var/tmp and /dev/shm one private tmpfs of `disk_mb` and `max_files` (gone with
  the namespace), a fresh /proc, no network at all, a /dev holding only null, zero, random and urandom
  (bound from the host's) and shm, and the highest directory above the stdlib that others cannot search
  (pyenv's /root) covered by an empty tmpfs with only what the interpreter needs bound back: the stdlib
  (lib-dynload included, so lazy imports work after the uid drop) and the files the process has mapped from
  there (its executable, libpython); site-packages under that stdlib is covered too. Nothing else there is
  readable, whatever its mode.
- "user namespaces" (a user, unprivileged user namespaces allowed): the same namespaces, filesystem,
  tmpfs and /dev, plus the user's home hidden the same way; the program runs as the user mapped to uid 0
  with every capability dropped. It can still read what the user can read outside the home.
- "limits only" (no namespaces): a private 0700 directory as cwd/HOME/TMPDIR (removed afterwards),
  the resource limits, Python's socket module disabled; as root also a distinct uid (and its files
  in /tmp, /var/tmp, /dev/shm removed afterwards). The host's /dev and files stay as visible as to any
  user. Without root, nothing stops it from reading or writing the user's files, signalling the user's
  processes or leaving files in /tmp.
In every mode: `python -I` (no user site, no script directory on sys.path), a minimal environment,
no inherited descriptors besides its pipes, limits on address space, CPU seconds, file size, open
files, no core dumps, RLIMIT_NPROC = 0, no_new_privs, a fresh anonymous session keyring, and last a
seccomp filter (libseccomp through ctypes, default-allow: `confined.DENIED_SYSCALLS` and netlink sockets fail
with EPERM). The filter denies every new task (clone, clone3, fork, vfork): no process, no thread, even where
RLIMIT_NPROC does not bind (the kernel exempts the host's root, which "user namespaces" forced as root is).
A mode whose filter cannot be installed fails its probe, so no sample runs without it. Nothing is imported
before the confinement but the interpreter's startup and `confined.py`.

Memory (`sandbox_capabilities()["memory"]`): where this process may make memory cgroups ("cgroup v1" or
"cgroup v2", see `memory_cgroup`), each process of a sample runs in one of its own limited to `memory_mb`
without swap, which it joins first thing, before it creates any other process: everything it allocates is
counted, heap and the tmpfs pages it writes alike, the kernel's OOM killer ends that process alone, and the
tester reports the candidate's end as a failure of that sample. The cgroup is removed after the sample (any
process left in it killed first). Elsewhere ("rlimits only": not root, or no usable memory controller) memory
is bounded per process by RLIMIT_AS/RLIMIT_DATA, the writable space by the tmpfs sizes, and SysV shared memory
by the filter; page cache and kernel memory are then not bounded per sample.

Not covered: what every user may read stays readable (in "limits only" as a user: everything the user can
read); /sys stays visible, read-only, in the namespace modes; CPU time is bounded per process (RLIMIT_CPU) and
by the wall clock, not shared fairly between samples; timing and cache side channels; a kernel bug reachable
through the syscalls the filter allows.
"""
from lora_one.sandbox.supervisor import (
                                         MODE_VARIABLE,
                                         MODES,
                                         Limits,
                                         Outcome,
                                         Sample,
                                         SandboxError,
                                         run_sample,
                                         sandbox_capabilities,
                                         sandbox_mode,
)

__all__ = ["MODES", "MODE_VARIABLE", "Limits", "Outcome", "Sample", "SandboxError", "run_sample",
           "sandbox_capabilities", "sandbox_mode"]
