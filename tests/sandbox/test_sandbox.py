"""The HumanEval sandbox: each attack of issue 11 reproduced. A hostile completion can neither fake
its verdict nor change anything outside its own sample, in every mode this machine supports; correct
code, lazy stdlib imports included, still passes."""
import errno
import hashlib
import os
import re
import socket
import stat
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from lora_one.sandbox import (
    MODE_VARIABLE,
    MODES,
    Limits,
    Sample,
    SandboxError,
    confined,
    memory_cgroup,
    run_sample,
    sandbox_mode,
    supervisor,
)
from lora_one.sandbox.supervisor import SHARED_TMP, UID_BASE

LIMITS = Limits(timeout_s=5.0, memory_mb=512, disk_mb=4, max_files=64)
AS_ROOT = os.geteuid() == 0
PROMPT = 'def add(a, b):\n    """a + b"""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
RIGHT = "    return a + b\n"
WRONG = "    return a - b\n"
ONE_CALL = "def check(candidate):\n    assert candidate(2, 3) == 5\n"  # the completion's prints appear once


def run(completion: str, limits: Limits = LIMITS, test: str = TEST):
    start = time.perf_counter()
    outcome = run_sample(Sample(PROMPT + completion, test, "add", PROMPT), limits)
    return outcome, time.perf_counter() - start


@pytest.fixture(params=[m if m == "namespaces" else pytest.param(m, marks=pytest.mark.slow) for m in MODES])
def mode(request, monkeypatch):
    """Each mode this machine can run (LORA_ONE_SANDBOX_MODE forces it); the others skip with the reason.
    The modes a root machine would not pick itself run with the slow tests."""
    monkeypatch.setenv(MODE_VARIABLE, request.param)
    try:
        sandbox_mode()
    except SandboxError as error:
        pytest.skip(str(error))  # names the mode and why it failed
    return request.param


class Host:
    """What no sample may change: a victim tree reachable by everyone (as a checkout usually is), victims in
    the shared temporary directories, and those directories' entries named with this run's marker or owned
    by a sandbox uid."""

    def __init__(self, root):
        self.marker = f"sandbox-test-{uuid.uuid4().hex}"
        self.tree = root / "project"
        self.tree.mkdir()
        (self.tree / "precious.txt").write_text("keep me")
        (self.tree / "program.py").write_text("assert True\n")  # the name samples used to have
        os.chmod(root, 0o755)
        self.victims = [self.tree / "precious.txt", self.tree / "program.py"]
        for top in SHARED_TMP:
            if os.path.isdir(top):
                victim = os.path.join(top, f"{self.marker}-victim")
                with open(victim, "w") as f:
                    f.write("keep me")
                os.chmod(victim, 0o666)  # writable by anyone: only the sandbox's filesystem protects it
                self.victims.append(victim)
        self.before = self.state()

    def state(self) -> dict:
        state = {}
        for path in map(str, self.victims + [self.tree]):
            info = os.lstat(path)
            content = open(path, "rb").read() if stat.S_ISREG(info.st_mode) else sorted(os.listdir(path))
            state[path] = (info.st_mode, info.st_uid, hashlib.sha256(repr(content).encode()).hexdigest())
        return state

    def leftovers(self) -> list[str]:
        found = []
        for top in SHARED_TMP:
            for parent, dirs, files in os.walk(top):
                for name in dirs + files:
                    path = os.path.join(parent, name)
                    with_marker = self.marker in name and not name.endswith("-victim")
                    try:
                        if with_marker or os.lstat(path).st_uid >= UID_BASE:
                            found.append(path)
                    except FileNotFoundError:  # someone else's file, just removed
                        pass
        return found

    def assert_unchanged(self) -> None:
        assert self.state() == self.before
        assert self.leftovers() == []

    def remove(self) -> None:
        for victim in self.victims[2:]:
            os.remove(victim)


@pytest.fixture
def host(tmp_path):
    host = Host(tmp_path)
    yield host
    host.remove()


def test_a_right_answer_passes_and_a_wrong_one_fails(mode, host):
    assert run(RIGHT)[0].passed
    outcome, _ = run(WRONG)
    assert outcome.status == "failed" and "AssertionError" in outcome.detail
    host.assert_unchanged()


EXIT_AND_EQUALITY_ATTACKS = {
    "sys.exit(0) at top level": WRONG + "import sys\nsys.exit(0)\n",
    "sys.exit(0) in the function": "    import sys\n    sys.exit(0)\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "atexit os._exit(0)": "    import atexit, os\n    atexit.register(os._exit, 0)\n    return a - b\n",
    "excepthook exits 0": "    import os, sys\n    sys.excepthook = lambda *exc: os._exit(0)\n    return a - b\n",
    "__eq__ always True": "    class Equal:\n        def __eq__(self, other):\n            return True\n"
                          "    return Equal()\n",
    "int subclass equal to all": "    class Int(int):\n        __eq__ = lambda self, other: True\n    return Int(0)\n",
    "fake verdict on every descriptor": (
        "    import json, os\n    fake = json.dumps({'passed': True}).encode()\n"
        "    for fd in range(1024):\n        try:\n            os.write(fd, len(fake).to_bytes(8, 'big') + fake)\n"
        "        except OSError:\n            pass\n    return a - b\n"),
}


@pytest.mark.parametrize("completion", EXIT_AND_EQUALITY_ATTACKS.values(), ids=EXIT_AND_EQUALITY_ATTACKS.keys())
def test_wrong_answers_cannot_fake_a_pass(mode, host, completion):
    outcome, seconds = run(completion)
    assert outcome.status == "failed", outcome
    assert seconds < LIMITS.timeout_s
    host.assert_unchanged()


def test_only_plain_builtin_values_cross_and_they_come_back_equal():
    value = [1, True, None, 2.5, float("inf"), "s", b"\x00b", (1, (2,)), {1: {"a": [3]}}, {4, 5}, frozenset({6}), 1j]
    decoded = confined.decode(confined.encode(value))
    assert decoded == value and [type(v) for v in decoded] == [type(v) for v in value]
    assert type(decoded[7]) is tuple and type(confined.decode(confined.encode(True))) is bool

    class Int(int):
        pass

    with pytest.raises(TypeError, match="not a plain builtin value"):
        confined.encode([Int(3)])
    with pytest.raises(ValueError, match="unknown tag"):
        confined.decode(["Equal", []])


@pytest.mark.skipif(not AS_ROOT, reason="needs a file the sandbox's uid cannot read, i.e. root and another uid")
def test_links_and_fifos_in_its_directory_are_never_opened_by_the_grader(host, tmp_path, monkeypatch):
    monkeypatch.setenv(MODE_VARIABLE, "namespaces")
    try:
        sandbox_mode()
    except SandboxError as error:
        pytest.skip(f"needs distinct uids: {error}")
    secret = tmp_path / "secret"
    secret.write_text("TOP-SECRET-" + host.marker)
    os.chmod(secret, 0o600)
    completion = RIGHT + (
        "import os\n"
        f"for name, target in [('stderr', {str(secret)!r}), ('stdout', '/dev/zero'), ('program.py', '/etc/shadow')]:\n"
        "    os.symlink(target, name)\n"
        "os.mkfifo('fifo')\nos.symlink('fifo', 'output')\n"
        f"try:\n    print(open({str(secret)!r}).read())\nexcept OSError as e:\n    print(type(e).__name__)\n")
    outcome, seconds = run(completion)
    assert outcome.passed and seconds < LIMITS.timeout_s
    assert "Error" in outcome.output_tail and "TOP-SECRET" not in outcome.output_tail + outcome.detail
    host.assert_unchanged()


def test_samples_cannot_kill_or_rewrite_their_siblings(mode, host):
    """One attacker runs with 4 right and 4 wrong siblings: it signals every pid it can name and rewrites
    every program it can find, while they run; right ones still pass, wrong ones still fail."""
    attack = (
        "    import os, signal, time\n    end = time.time() + 3\n    while time.time() < end:\n"
        "        for pid in [-1] + list(range(2, 1 << 15)):\n"
        "            try:\n                os.kill(pid, signal.SIGKILL)\n"
        "            except OSError:\n                pass\n"
        "        for top in ('/tmp', '/var/tmp', '/dev/shm', '/proc'):\n"
        "            for parent, dirs, files in os.walk(top):\n"
        "                for name in files:\n"
        "                    try:\n                        open(os.path.join(parent, name), 'w').write('return 5')\n"
        "                    except OSError:\n                        pass\n"
        "    return a - b\n")
    slow = "    import time\n    time.sleep(1.5)\n"
    limits = Limits(timeout_s=20.0, memory_mb=512, disk_mb=4, max_files=64)
    completions = [attack] + [slow + RIGHT] * 4 + [slow + WRONG] * 4
    with ThreadPoolExecutor(len(completions)) as pool:
        outcomes = [o for o, _ in pool.map(lambda c: run(c, limits), completions)]
    assert [o.status for o in outcomes] == ["failed"] + ["passed"] * 4 + ["failed"] * 4, [o.detail for o in outcomes]
    host.assert_unchanged()


def test_nothing_the_completion_names_is_imported_before_the_drop(mode, host):
    """`import this` prints the Zen of Python when imported: dead code must not import it."""
    outcome, _ = run("    if False:\n        import this\n" + RIGHT)
    assert outcome.passed and "Beautiful is better than ugly" not in outcome.output_tail
    host.assert_unchanged()


def test_lazy_stdlib_imports_work_after_the_drop(mode, host):
    completion = ("    import collections, datetime\n"
                  "    assert datetime.datetime.strptime('2024-02-29', '%Y-%m-%d').day == 29\n"
                  "    assert collections.Counter('abca').most_common(1) == [('a', 2)]\n" + RIGHT)
    outcome, _ = run(completion)
    assert outcome.passed, outcome
    host.assert_unchanged()


def test_writable_space_is_capped_in_total_and_gone_afterwards(mode, host):
    if mode == "limits only":
        pytest.skip("without namespaces only the size of each file is capped (documented)")
    completion = (
        "    import os\n    written = files = 0\n"
        "    for n, top in enumerate(('/tmp', '/var/tmp', '/dev/shm', os.getcwd())):  # may be one directory\n"
        "        for i in range(10000):\n"
        "            try:\n"
        f"                with open(os.path.join(top, f'{host.marker}-big-{{n}}-{{i}}'), 'wb') as f:\n"
        "                    f.write(b'x' * 2**20)\n"
        "                written += 2**20\n"
        "            except OSError:\n                break\n"
        "        for i in range(100000):\n"
        "            try:\n"
        f"                open(os.path.join(top, f'{host.marker}-{{n}}-{{i}}'), 'w').close()\n"
        "                files += 1\n"
        "            except OSError:\n                break\n"
        "    print('written', written, 'files', files)\n" + RIGHT)
    outcome, _ = run(completion, test=ONE_CALL)
    assert outcome.passed, outcome
    written, files = map(int, re.search(r"written (\d+) files (\d+)", outcome.output_tail).groups())
    assert 0 < written <= LIMITS.disk_mb * 2**20 and 0 < files <= LIMITS.max_files
    host.assert_unchanged()


@pytest.mark.parametrize("source", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"])
def test_endless_programs_are_killed_at_the_wall_clock_limit(source):
    outcome, seconds = run(RIGHT + source)
    assert outcome.status == "timed out" and seconds < LIMITS.timeout_s + 2


def test_printing_without_end_keeps_only_a_tail(host):
    outcome, seconds = run(RIGHT + "while True:\n    print('x' * 10000)\n")
    assert outcome.status == "timed out" and seconds < LIMITS.timeout_s + 2
    assert 0 < len(outcome.output_tail) <= LIMITS.output_kb * 1024
    host.assert_unchanged()


def sandbox_processes() -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:  # gone meanwhile
            continue
        if supervisor.CHILD_SCRIPT.encode() in cmdline:
            pids.append(int(pid))
    return pids


def test_no_process_outlives_its_sample(mode):
    """It clears its parent-death signal, leaves its session, ignores SIGTERM and sleeps: killed all the same."""
    escape = ("import ctypes, os, signal, time\nctypes.CDLL(None).prctl(1, 0, 0, 0, 0)\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\nos.setsid()\ntime.sleep(600)\n")
    outcome, seconds = run(RIGHT + escape, Limits(timeout_s=2.0))
    assert outcome.status == "timed out" and seconds < 2.0 + supervisor.SHIM_GRACE_S
    assert sandbox_processes() == []


def test_a_fork_bomb_cannot_fork():
    outcome, seconds = run("    import os\n    while True:\n        os.fork()\n")
    assert outcome.status == "failed" and "PermissionError" in outcome.detail and seconds < LIMITS.timeout_s


def test_a_50_gb_allocation_fails_with_memory_error():
    outcome, _ = run("    x = bytearray(50 * 2**30)\n" + RIGHT)
    assert outcome.status == "failed" and "MemoryError" in outcome.detail


def test_shell_commands_do_not_run(tmp_path):
    marker = tmp_path / "pwned"
    completion = (f"    import os, subprocess\n    status = os.system('touch {marker}')\n"
                  f"    try:\n        subprocess.run(['touch', '{marker}'])\n    except OSError:\n        pass\n"
                  f"    assert status == 0 and os.path.exists('{marker}')\n" + RIGHT)
    assert run(completion)[0].status == "failed"
    assert not marker.exists()


def test_files_outside_its_sample_survive(mode, host):
    """The project's files cannot be removed or written; the shared temporary directories' files are not
    even visible (in the namespace modes the sample's /tmp is its own), and stay as they were. (In "limits
    only" files that every user may write stay writable, as documented.)"""
    project = host.victims[:2]
    for victim in project:
        for attack in (f"    import os\n    os.remove({str(victim)!r})\n",
                       f"    open({str(victim)!r}, 'w').write('overwritten')\n",
                       f"    import shutil\n    shutil.rmtree({str(host.tree)!r})\n"):
            outcome, _ = run(attack + RIGHT)
            assert outcome.status == "failed" and "Error" in outcome.detail
    shared = host.victims[len(project):] if mode != "limits only" else []  # its victims are writable by all
    for victim in shared:
        run(f"    import os\n    open({str(victim)!r}, 'w').write('overwritten')\n"
            f"    os.remove({str(victim)!r})\n" + RIGHT)
    host.assert_unchanged()


def test_the_environment_is_minimal():
    os.environ["LORA_ONE_SECRET_TOKEN"] = "hunter2"
    try:
        outcome, _ = run("    import os\n    assert 'LORA_ONE_SECRET_TOKEN' not in os.environ\n"
                         "    assert set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_CTYPE'}, os.environ\n"
                         + RIGHT)
    finally:
        del os.environ["LORA_ONE_SECRET_TOKEN"]
    assert outcome.passed, outcome


def test_no_network_even_through_raw_libc_calls(mode):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    python_level = f"    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    # bypasses Python's socket module: only a network namespace stops this one
    libc_level = (
        "    import ctypes, struct\n    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    fd = libc.socket(2, 1, 0)\n    assert fd >= 0, 'no socket'\n"
        f"    addr = struct.pack('<HH4s8x', 2, ({port} >> 8) | (({port} & 255) << 8), bytes([127, 0, 0, 1]))\n"
        "    assert libc.connect(fd, addr, len(addr)) == 0, ctypes.get_errno()\n"
    )
    try:
        for attack in (python_level, libc_level) if mode != "limits only" else (python_level,):
            assert run(attack + RIGHT)[0].status == "failed"
        server.settimeout(0.2)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()


@pytest.mark.skipif(not AS_ROOT, reason="the root modes only")
def test_root_gets_the_namespaces_mode_or_says_why_not(monkeypatch):
    monkeypatch.delenv(MODE_VARIABLE, raising=False)
    try:
        assert sandbox_mode() == "namespaces"
    except AssertionError:
        monkeypatch.setenv(MODE_VARIABLE, "namespaces")
        with pytest.raises(SandboxError):  # the strongest mode was skipped only because it cannot work here
            sandbox_mode()


@pytest.mark.skipif(not AS_ROOT or os.stat(os.path.dirname(os.__file__)).st_mode & 0o005 == 0o005
                    and confined._first_closed_ancestor(os.__file__) is None,
                    reason="the interpreter is readable by other users here")
def test_without_namespaces_an_unreadable_interpreter_is_refused_not_run(monkeypatch):
    """pyenv under /root: a dropped uid could not import the stdlib lazily; refuse instead of failing samples."""
    monkeypatch.setenv(MODE_VARIABLE, "limits only")
    with pytest.raises(SandboxError, match="not readable by the sandbox's uid") as refused:
        sandbox_mode()
    # only the forced mode was tried, and the message says so: the namespaces mode may well work here
    assert str(refused.value).startswith(f"{MODE_VARIABLE}='limits only' forces a mode that does not work on this "
                                         "machine (no other tried): 'limits only' failed: PermissionError: ")


def test_when_no_mode_works_each_mode_tried_is_named_with_its_failure(monkeypatch):
    """A child script that cannot start (here: missing) fails every mode's probe; the message names each mode
    the machine would try, in order, with the reason (the interpreter's own words)."""
    monkeypatch.delenv(MODE_VARIABLE, raising=False)
    monkeypatch.setattr(supervisor, "_modes", {})  # probe again, not the mode found by an earlier test
    monkeypatch.setattr(supervisor, "CHILD_SCRIPT", "/nonexistent/confined.py")
    with pytest.raises(SandboxError) as refused:
        sandbox_mode()
    strongest = "namespaces" if AS_ROOT else "user namespaces"
    message = str(refused.value)
    assert message.startswith(f"no sandbox mode works on this machine; tried {strongest!r} and 'limits only': "
                              f"{strongest!r} failed: ")
    assert "; 'limits only' failed: " in message
    assert message.count("can't open file '/nonexistent/confined.py'") == 2


# --- as a user: the test, as root, starts a process of an unprivileged uid that can run this interpreter
# (a private mount namespace exposes it as the namespaces mode does) and let it run the attacks itself.

USER_UID = 4242
EXPOSE_INTERPRETER_AND_BECOME_USER = """
import os, sys
sys.path.insert(0, {src!r})
from lora_one.sandbox import confined as c
c._check(c.libc.unshare(c.CLONE_NEWNS), "unshare")
c._mount(None, "/", None, c.MS_REC | c.MS_PRIVATE)
prefix = os.path.realpath(sys.base_prefix)
covered = c._first_closed_ancestor(prefix)
if covered:
    handle = os.open(prefix, os.O_PATH | os.O_DIRECTORY)
    c._mount("tmpfs", covered, "tmpfs", 0, "mode=0755")
    os.makedirs(prefix)
    c._mount(f"/proc/self/fd/{{handle}}", prefix, None, c.MS_BIND | c.MS_REC)
c._become({uid})
os.execve(sys.executable, [sys.executable, "-c", {inner!r}], {env!r})
"""
AS_USER = """
import json, sys
sys.path.insert(0, {src!r})
from lora_one.sandbox import Limits, Sample, run_sample, sandbox_mode
from concurrent.futures import ThreadPoolExecutor
def run(completion):
    outcome = run_sample(Sample({prompt!r} + completion, {test!r}, "add", {prompt!r}), Limits(timeout_s=20.0))
    return [outcome.status, outcome.output_tail]
cases = {cases!r}
with ThreadPoolExecutor(len(cases)) as pool:
    print(json.dumps({{"mode": sandbox_mode(), "cases": dict(zip(cases, pool.map(run, cases.values())))}}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not AS_ROOT, reason="making an unprivileged process that can run this interpreter needs root")
@pytest.mark.parametrize("user_mode", ["user namespaces", "limits only"])
def test_as_a_user_the_verdict_holds_and_user_namespaces_protect_the_users_files(user_mode):
    import json
    import shutil
    import subprocess
    import sys

    home = f"/run/lora_one_sandbox_test_home_{uuid.uuid4().hex}"  # outside /tmp, which the sandbox covers anyway
    os.makedirs(f"{home}/project")
    try:
        for path, text in ((f"{home}/secret.txt", "HOME-SECRET"), (f"{home}/project/precious.txt", "keep me")):
            with open(path, "w") as f:
                f.write(text)
        for path in (home, f"{home}/project", f"{home}/secret.txt", f"{home}/project/precious.txt"):
            os.chown(path, USER_UID, USER_UID)
        os.chmod(f"{home}/secret.txt", 0o600)
        cases = {"right": RIGHT, "wrong": WRONG, **EXIT_AND_EQUALITY_ATTACKS,
                 "reads the home": RIGHT + f"try:\n    print(open({home + '/secret.txt'!r}).read())\n"
                                   "except OSError as e:\n    print(type(e).__name__)\n",
                 "overwrites the project": RIGHT + f"open({home + '/project/precious.txt'!r}, 'w').write('x')\n"}
        if user_mode == "user namespaces":  # without namespaces kill(-1) would reach this test's own processes
            cases.update({f"sibling {i}": "    import time\n    time.sleep(2)\n" + RIGHT for i in range(3)})
            cases["kills every pid"] = ("    import os, time\n    end = time.time() + 4\n    while time.time() < end:\n"
                                        "        for pid in [-1] + list(range(2, 1 << 15)):\n            try:\n"
                                        "                os.kill(pid, 9)\n            except OSError:\n"
                                        "                pass\n" + RIGHT)
        src = str(supervisor.CHILD_SCRIPT.rsplit("/lora_one/", 1)[0])
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", MODE_VARIABLE: user_mode}
        inner = AS_USER.format(src=src, prompt=PROMPT, test=TEST, cases=cases)
        wrapper = EXPOSE_INTERPRETER_AND_BECOME_USER.format(src=src, uid=USER_UID, inner=inner, env=env)
        done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=300)
        if user_mode == "user namespaces" and "'user namespaces' failed" in done.stderr:
            pytest.skip(f"unprivileged user namespaces are not allowed here: {done.stderr[-300:]}")
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        statuses = {name: status for name, (status, _) in report["cases"].items()}
        assert report["mode"] == user_mode
        assert statuses.pop("right") == "passed"
        assert all(status == "failed" for name, status in statuses.items() if name in EXIT_AND_EQUALITY_ATTACKS or
                   name == "wrong"), statuses
        if user_mode == "user namespaces":
            assert report["cases"]["reads the home"] == ["passed", "FileNotFoundError\n"]
            assert statuses["overwrites the project"] == "failed"
            assert open(f"{home}/project/precious.txt").read() == "keep me"
            assert [statuses[f"sibling {i}"] for i in range(3)] == ["passed"] * 3
            assert statuses["kills every pid"] == "passed"
    finally:
        shutil.rmtree(home)


# --- the syscall filter and the keyrings (issue 19): the kernel objects that namespaces do not separate

def syscall_number(name: str) -> int:
    return confined.syscall_number(confined._load_libseccomp(), name)


KEY_SPEC_SESSION, KEY_SPEC_USER = -3, -4
KEYCTL_GET_KEYRING_ID, KEYCTL_SETPERM, KEYCTL_SEARCH = 0, 5, 10
IPC_CREAT_0600 = 0o1600
# A call of each that succeeds, or fails otherwise than with EPERM, where nothing filters it (here as root).
DENIED_CALLS = {
    "add_key": "b'user', b'lora-one-probe', b'x', 1, KEY_SPEC_SESSION",
    "keyctl": "KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION, 0",
    "shmget": "0, 100 * 2**20, IPC_CREAT_0600",  # a 100 MB SysV segment, outside memory_mb and disk_mb
    "msgget": "0, IPC_CREAT_0600",
    "unshare": f"{confined.CLONE_NEWUSER}",
    "mount": "b'none', b'/tmp', b'tmpfs', 0, None",
    "io_uring_setup": "1, ctypes.create_string_buffer(120)",
    "bpf": "0, ctypes.create_string_buffer(128), 128",
    "ptrace": "2, os.getppid(), 0, 0",  # PTRACE_PEEKDATA of a process it does not trace: ESRCH unfiltered
    "clone3": "ctypes.create_string_buffer(88), 88",  # a fork without a signal: EAGAIN (RLIMIT_NPROC) or a child
    "socket": f"{confined.AF_NETLINK}, 3, 0",  # a raw NETLINK_ROUTE socket
}
CALL_EACH = (
    "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    f"KEY_SPEC_SESSION, KEYCTL_GET_KEYRING_ID, IPC_CREAT_0600 = {KEY_SPEC_SESSION}, {KEYCTL_GET_KEYRING_ID}, "
    f"{IPC_CREAT_0600}\n"
    + "".join(f"result = libc.syscall({syscall_number(name)}, {args})\n"
              f"print('syscall {name}', result, ctypes.get_errno() if result < 0 else 0)\n"
              for name, args in DENIED_CALLS.items()))


def test_denied_syscalls_fail_with_eperm_and_the_sample_is_scored_normally(mode, host):
    outcome, seconds = run(RIGHT + CALL_EACH)
    assert outcome.passed and seconds < LIMITS.timeout_s, outcome
    results = {name: (int(result), int(errno))
               for name, result, errno in re.findall(r"syscall (\w+) (-?\d+) (\d+)", outcome.output_tail)}
    assert results == dict.fromkeys(DENIED_CALLS, (-1, errno.EPERM))
    host.assert_unchanged()


def test_no_sample_can_start_a_process_or_a_thread(mode):
    """The filter denies every new task (clone, clone3, fork, vfork) with EPERM in every mode, "user namespaces"
    forced as root included, where RLIMIT_NPROC does not bind the host's root: a fork, a thread and a subprocess
    all fail, and the sample is scored as usual."""
    completion = RIGHT + (
        "import errno, os, subprocess, sys, threading\n"
        "def thread():\n    t = threading.Thread(target=print, args=('thread',))\n    t.start()\n    t.join()\n"
        "def fork():\n    if os.fork() == 0:\n        os._exit(0)\n    os.wait()\n    print('fork')\n"
        "for start in (lambda: subprocess.run([sys.executable, '-c', 'print(\"subprocess\")']), thread, fork):\n"
        "    try:\n        start()\n"
        "    except RuntimeError as error:  # threading's words for a failed clone\n"
        "        print('thread failed' if \"can't start new thread\" in str(error) else error)\n"
        "    except OSError as error:\n        print('denied', errno.errorcode[error.errno])\n")
    outcome, _ = run(completion)
    assert outcome.passed, outcome
    assert outcome.output_tail.splitlines() == ["denied EPERM", "thread failed", "denied EPERM"], outcome.output_tail


FILTERED_PROCESS = """
import ctypes, errno, os, subprocess, sys, threading
sys.path.insert(0, {sandbox!r})
import confined
confined._install_syscall_filter(confined._load_libseccomp())
libc = ctypes.CDLL(None, use_errno=True)
def call(number, *args):
    result = libc.syscall(number, *args)
    if result == 0:  # a clone that went through: the copy ends here
        os._exit(0)
    return errno.errorcode.get(ctypes.get_errno()) if result < 0 else "ok"
print("clone", call({clone}, 17, 0, 0, 0, 0))  # SIGCHLD alone: what fork() does
print("clone new user", call({clone}, {new_user} | 17, 0, 0, 0, 0))
print("clone3", call({clone3}, ctypes.create_string_buffer(88), 88))
for start in (os.fork, lambda: subprocess.run([sys.executable, "-c", "print(1)"])):
    try:
        start()
    except OSError as error:
        print(errno.errorcode[error.errno])
try:
    threading.Thread(target=print, args=("thread", "ok")).start()
except RuntimeError as error:
    print(error)
"""


def test_the_filter_alone_denies_every_new_task_even_to_root():
    """Outside the sandbox, where RLIMIT_NPROC does not bind (root, or a user without the limit): the filter
    alone, in a process of its own."""
    import subprocess
    import sys

    script = FILTERED_PROCESS.format(sandbox=os.path.dirname(supervisor.CHILD_SCRIPT), clone=syscall_number("clone"),
                                     clone3=syscall_number("clone3"), new_user=confined.CLONE_NEWUSER)
    done = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["clone EPERM", "clone new user EPERM", "clone3 EPERM", "EPERM", "EPERM",
                                        "can't start new thread"]


def read_keys(marker: str) -> str:
    return (f"try:\n    print('found' if {marker!r} in open('/proc/keys').read() else 'absent')\n"
            "except OSError as error:\n    print('absent', error)\n")


def host_keys_named(marker: str) -> list[str]:
    """The keys whose description holds `marker` that root, or any sandbox uid holding keys, can see: /proc/keys
    shows a key only to whom may view it, and a key that a sample left in its uid's keyring outlives it."""
    import subprocess

    key_owners = [int(line.split(":")[0]) for line in open("/proc/key-users")]
    readers = [None] + [uid for uid in key_owners if uid >= UID_BASE and AS_ROOT]  # only root can become them
    return [line for uid in readers
            for line in subprocess.run(["cat", "/proc/keys"], user=uid, group=uid, capture_output=True, text=True,
                                       check=True).stdout.splitlines()
            if marker in line]


def test_a_key_one_sample_writes_reaches_neither_the_next_sample_nor_the_host(mode, host):
    """Issue 19's shared memory across samples: a key readable by all in the user keyring, then looked for."""
    marker = host.marker.encode()
    write = RIGHT + (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"for keyring in ({KEY_SPEC_USER}, {KEY_SPEC_SESSION}):\n"
        f"    key = libc.syscall({syscall_number('add_key')}, b'user', {marker!r}, b'the hidden tests', 16, keyring)\n"
        f"    libc.syscall({syscall_number('keyctl')}, {KEYCTL_SETPERM}, key, 0x3f3f3f3f)  # all rights to all\n"
        "    print('add_key', key, ctypes.get_errno())\n")
    find = RIGHT + (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        f"key = libc.syscall({syscall_number('request_key')}, b'user', {marker!r}, None, 0)\n"
        "print('request_key', key, ctypes.get_errno())\n" + read_keys(host.marker))
    written, _ = run(write)
    found, _ = run(find)
    assert written.passed and found.passed, (written, found)
    assert written.output_tail.split("\n")[:2] == [f"add_key -1 {errno.EPERM}"] * 2
    assert found.output_tail.split("\n")[:2] == [f"request_key -1 {errno.EPERM}", "absent"]
    assert host_keys_named(host.marker) == []
    host.assert_unchanged()


WITHOUT_LIBSECCOMP = """
import ctypes, runpy
def load(name, *args, real=ctypes.CDLL, **kwargs):
    if name and "seccomp" in name:
        raise OSError(f"{{name}}: cannot open shared object file: No such file or directory")
    return real(name, *args, **kwargs)
ctypes.CDLL = load
runpy.run_path({script!r}, run_name="__main__")
"""


def test_without_the_seccomp_library_no_mode_runs(tmp_path, monkeypatch):
    """The filter is part of every mode: where libseccomp cannot be loaded each mode's probe fails and says why,
    never a sample run without it."""
    hiding = tmp_path / "confined_without_libseccomp.py"
    hiding.write_text(WITHOUT_LIBSECCOMP.format(script=supervisor.CHILD_SCRIPT))
    monkeypatch.delenv(MODE_VARIABLE, raising=False)
    monkeypatch.setattr(supervisor, "_modes", {})
    monkeypatch.setattr(supervisor, "CHILD_SCRIPT", str(hiding))
    with pytest.raises(SandboxError) as refused:
        sandbox_mode()
    assert str(refused.value).count("the seccomp filter cannot be installed (libseccomp.so.2: cannot open") == 2


# --- issue 19, round 3: what the namespace modes leave visible, new tasks, the memory of a sample

STDLIB_HIDDEN_BY_A_CLOSED_DIRECTORY = any(map(confined._first_closed_ancestor, supervisor.STDLIB))


@pytest.mark.skipif(not STDLIB_HIDDEN_BY_A_CLOSED_DIRECTORY, reason="the interpreter is readable by every user here")
def test_of_the_interpreters_prefix_only_the_stdlib_and_its_mapped_files_are_visible(mode, host):
    """pyenv under /root: the stdlib is bound back (lazy imports of Python and C modules work), site-packages is
    empty, and a file readable by all anywhere else in the prefix stays hidden under the cover of /root."""
    if mode == "limits only":
        pytest.skip("no mount namespace: the interpreter's files are what every user may read (documented)")
    site_packages = os.path.join(supervisor.STDLIB[0], "site-packages")
    placed = [os.path.join(site_packages, f"{host.marker}.txt"),
              os.path.join(os.path.realpath(sys.base_prefix), f"{host.marker}-secret.txt")]
    completion = (
        "    import os\n"
        "    import _strptime, json, decimal, ctypes, sqlite3  # Python and C modules, none loaded before\n"
        "    assert decimal.Decimal('1.1') + 1 == decimal.Decimal('2.1') and json.loads('[1]') == [1]\n"
        f"    print('site-packages', os.listdir({site_packages!r}))\n"
        f"    for path in {placed!r}:\n"
        "        try:\n            print(open(path).read())\n"
        "        except OSError as error:\n            print(type(error).__name__)\n" + RIGHT)
    try:
        for path in placed:
            with open(path, "w") as f:
                f.write("TOP-SECRET-" + host.marker)
            os.chmod(path, 0o644)
        outcome, _ = run(completion, test=ONE_CALL)
    finally:
        for path in placed:
            os.remove(path)
    assert outcome.passed, outcome
    assert outcome.output_tail.splitlines() == ["site-packages []", "FileNotFoundError", "FileNotFoundError"]
    host.assert_unchanged()


def test_dev_holds_only_null_zero_and_the_random_devices(mode, host):
    """A fresh read-only /dev: no terminal, kernel log, memory, GPU or disk node; the four harmless ones work."""
    if mode == "limits only":
        pytest.skip("no mount namespace: the host's /dev (documented)")
    absent = ("/dev/tty", "/dev/mem", "/dev/kmsg", "/dev/nvidiactl", "/dev/nvidia0", "/dev/pts", "/dev/fd")
    completion = (
        "    import errno, os\n    print(sorted(os.listdir('/dev')))\n"
        "    with open('/dev/null', 'w') as f:\n        f.write('x')\n"
        "    print(len(open('/dev/urandom', 'rb').read(16)), open('/dev/zero', 'rb').read(2))\n"
        f"    print([os.path.exists(path) for path in {absent!r}])\n"
        "    try:\n        os.mknod('/dev/planted')\n"
        "    except OSError as error:\n        print(errno.errorcode[error.errno])\n" + RIGHT)
    outcome, _ = run(completion, test=ONE_CALL)
    assert outcome.passed, outcome
    assert outcome.output_tail.splitlines() == [str(["null", "random", "shm", "urandom", "zero"]), "16 b'\\x00\\x00'",
                                                str([False] * len(absent)), "EROFS"]
    host.assert_unchanged()


MEMORY_CGROUP = memory_cgroup.find()
needs_a_memory_cgroup = pytest.mark.skipif(MEMORY_CGROUP is None, reason="no memory cgroup can be made here "
                                           "(not root, or no memory controller this process may use)")


def fill_shm_then_allocate(tmpfs_mb: int, anonymous_mb: int) -> str:
    """Top-level code of a completion: `tmpfs_mb` written to /dev/shm (tmpfs in every mode), then `anonymous_mb`
    of heap; it says how far it got."""
    return ("import os\nwith open(os.path.join('/dev/shm', f'fill-{os.getpid()}'), 'wb') as f:\n"
            f"    for i in range({tmpfs_mb}):\n        f.write(b'x' * 2**20)\n        f.flush()\n"
            f"print('wrote', {tmpfs_mb})\nheld = bytearray({anonymous_mb} * 2**20)\n"
            f"print('allocated', {anonymous_mb})\n")


def sandbox_cgroups() -> list[str]:
    return [name for name in os.listdir(MEMORY_CGROUP.parent) if name.startswith(memory_cgroup.NAME_PREFIX)]


@needs_a_memory_cgroup
def test_tmpfs_pages_count_against_the_memory_limit(mode):
    """128 MB written to a tmpfs that allows 256 MB: killed (or refused) at memory_mb = 64, written at 512."""
    limits = {mb: Limits(timeout_s=10.0, memory_mb=mb, disk_mb=256, max_files=64) for mb in (64, 512)}
    capped, _ = run(RIGHT + fill_shm_then_allocate(128, 0), limits[64])
    assert capped.status == "failed" and "wrote" not in capped.output_tail, capped
    roomy, _ = run(RIGHT + fill_shm_then_allocate(128, 0), limits[512])
    assert roomy.passed and roomy.output_tail.splitlines() == ["wrote 128", "allocated 0"], roomy
    assert sandbox_cgroups() == []


@needs_a_memory_cgroup
def test_a_sample_out_of_memory_fails_alone_and_leaves_no_cgroup(mode, host):
    """96 MB of tmpfs and 64 MB of heap, each within its own limit (disk_mb, the address space), together beyond
    memory_mb = 128: the kernel kills that sample's process. Its siblings pass, and so does the next sample; the
    score goes on (no SandboxError)."""
    limits = Limits(timeout_s=20.0, memory_mb=128, disk_mb=256, max_files=64)
    completions = [RIGHT + fill_shm_then_allocate(96, 64)] + ["    import time\n    time.sleep(1)\n" + RIGHT] * 2
    with ThreadPoolExecutor(len(completions)) as pool:
        (hog, *siblings) = [outcome for outcome, _ in pool.map(lambda c: run(c, limits), completions)]
    assert hog.status == "failed" and "allocated" not in hog.output_tail, hog
    assert "the candidate's process ended before answering" in hog.detail
    assert [sibling.status for sibling in siblings] == ["passed", "passed"]
    assert run(RIGHT + fill_shm_then_allocate(32, 64), limits)[0].passed
    assert sandbox_cgroups() == []
    host.assert_unchanged()


@needs_a_memory_cgroup
def test_removing_a_cgroup_kills_what_is_still_in_it_first():
    """The backstop after a sample: a process left in the cgroup (here a sleep moved into it) is killed, then
    the cgroup removed."""
    import subprocess

    path = MEMORY_CGROUP.create(64 * 2**20)
    sleeper = subprocess.Popen(["sleep", "60"])
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(sleeper.pid))
    memory_cgroup.remove(path, supervisor.SHIM_GRACE_S)
    assert sleeper.wait(timeout=5) == -9 and not os.path.exists(path)


def test_without_a_memory_cgroup_samples_run_on_the_rlimits_and_say_so(monkeypatch):
    monkeypatch.setattr(memory_cgroup, "find", lambda: None)
    assert supervisor.sandbox_capabilities()["memory"] == "rlimits only"
    assert run(RIGHT)[0].passed
    assert run(WRONG)[0].status == "failed"


HYBRID_CGROUPS = ["4:memory:/jobs/grader", "1:cpu,cpuacct:/", "0::/"]
HYBRID_MOUNTS = ["35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
                 "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw"]
V2_CGROUPS = ["0::/grader.slice/run.scope"]
V2_MOUNTS = ["30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"]


def test_the_memory_hierarchy_is_found_in_either_layout(tmp_path):
    """cgroup v1 (memory hierarchy mounted apart, as on this project's machine) and v2 (one unified hierarchy,
    used only where its controllers include memory), from /proc/self/cgroup and /proc/self/mountinfo."""
    hybrid = memory_cgroup.candidates(HYBRID_CGROUPS, HYBRID_MOUNTS)
    assert hybrid == [memory_cgroup.Hierarchy(1, "/sys/fs/cgroup/memory/jobs/grader")]
    v2_root = tmp_path / "unified"
    grader = v2_root / "grader.slice" / "run.scope"
    grader.mkdir(parents=True)
    (grader / "cgroup.controllers").write_text("cpu io pids\n")
    mounts = [line.replace("/sys/fs/cgroup", str(v2_root)) for line in V2_MOUNTS]
    assert memory_cgroup.candidates(V2_CGROUPS, mounts) == []  # no memory controller there
    (grader / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert memory_cgroup.candidates(V2_CGROUPS, mounts) == [memory_cgroup.Hierarchy(2, str(grader))]


def test_each_layout_gets_memory_without_swap_and_its_optional_limits_where_they_exist():
    mb = 2**20
    v1, v2 = memory_cgroup.Hierarchy(1, "/v1"), memory_cgroup.Hierarchy(2, "/v2")
    assert v1.limits(64 * mb, {"memory.limit_in_bytes"}) == [("memory.limit_in_bytes", 64 * mb)]
    assert v1.limits(64 * mb, {"memory.limit_in_bytes", "memory.memsw.limit_in_bytes"}) == [
        ("memory.limit_in_bytes", 64 * mb), ("memory.memsw.limit_in_bytes", 64 * mb)]
    assert v2.limits(64 * mb, {"memory.max", "memory.swap.max", "pids.max"}) == [
        ("memory.max", 64 * mb), ("memory.swap.max", 0), ("pids.max", memory_cgroup.TASKS_PER_PROCESS)]


# --- issue 19, "done when": nothing a sample learns reaches a later sample, and host shared memory stays bounded

LEARN_PROMPT = 'def is_kept(x):\n    """whether x is kept"""\n'
KEPT = (True, False, True, False)  # the strategy's fixed first guess (True) is wrong at the second call
LEARN_TEST = "def check(candidate):\n" + "".join(f"    assert candidate({i}) is {v}\n" for i, v in enumerate(KEPT))
# A completion that never computes the answer: it learns the hidden tests through any state a later sample can
# reach (LEARNING_HELPERS, run by `learning_completion`). Its record is "<its nonce>:<one token per call>", a
# token being the answer it gave (T/F) and whether the tester called again afterwards (c: confirmed right) or
# not yet (p: pending; if the record ends there, that answer failed). Each call reads every channel, answers
# from a record of another sample when it finds one (and prints FOUND-RECORD), else guesses True, then writes its
# updated record to every channel that takes it. It prints SELF for each channel from which it reads back its
# own record of the previous call (the channel works within its sample) and UNWRITABLE with the errno for each
# that refuses the record, so no channel fails silently.
LEARNING_HELPERS = """import ctypes, errno, os, struct
libc = ctypes.CDLL(None, use_errno=True)
NONCE = os.urandom(4).hex()
DESCRIPTION = MARKER.encode() + b"-record"
IPC_KEY = int(MARKER[-7:], 16)
KEYCTL_SETPERM, KEYCTL_SEARCH, KEYCTL_READ, KEY_SPEC_SESSION, KEY_SPEC_USER = 5, 10, 11, -3, -4
IPC_CREAT_0666, IPC_NOWAIT = 0o1666, 0o4000
O_RDWR, O_CREAT, O_NONBLOCK = os.O_RDWR, os.O_CREAT, os.O_NONBLOCK
libc.mq_open.restype = libc.shmat.restype = ctypes.c_void_p
tokens, learned, bound_socket, said_self = [], [""], [], set()  # learned: the longest record of another sample
FILE_PLACES = {"file /tmp": "/tmp", "file /var/tmp": "/var/tmp", "file /dev/shm": "/dev/shm",
               "file cwd": os.getcwd(), "file home": os.environ.get("HOME", "/"), "file /run/lock": "/run/lock"}

def failed(result):
    if result is None or result < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return result

def read_file(place):
    with open(os.path.join(place, MARKER + "-record")) as f:
        return f.read()

def write_file(place, record):
    path = os.path.join(place, MARKER + "-record")
    with open(path, "w") as f:
        f.write(record)
    os.chmod(path, 0o666)

def read_key(keyring):
    key = failed(libc.syscall(NR["keyctl"], KEYCTL_SEARCH, keyring, b"user", DESCRIPTION, 0))
    buffer = ctypes.create_string_buffer(256)
    size = failed(libc.syscall(NR["keyctl"], KEYCTL_READ, key, buffer, 256))
    return buffer.raw[:size].decode()

def write_key(keyring, record):
    key = failed(libc.syscall(NR["add_key"], b"user", DESCRIPTION, record.encode(), len(record), keyring))
    failed(libc.syscall(NR["keyctl"], KEYCTL_SETPERM, key, 0x3F3F3F3F))  # all rights to all

def read_sysv_shm():
    address = failed(libc.shmat(failed(libc.shmget(IPC_KEY, 0, 0)), None, 0) or -1)
    return ctypes.string_at(address, 64).split(b"\\0")[0].decode()

def write_sysv_shm(record):
    address = failed(libc.shmat(failed(libc.shmget(IPC_KEY, 4096, IPC_CREAT_0666)), None, 0) or -1)
    ctypes.memmove(address, record.encode() + b"\\0", len(record) + 1)

def read_sysv_msg():
    queue, buffer = failed(libc.msgget(IPC_KEY, 0)), ctypes.create_string_buffer(8 + 256)
    size = failed(libc.msgrcv(queue, buffer, 256, 0, IPC_NOWAIT))
    failed(libc.msgsnd(queue, buffer, size, IPC_NOWAIT))  # put it back for the next reader
    return buffer.raw[8:8 + size].decode()

def write_sysv_msg(record):
    queue, buffer = failed(libc.msgget(IPC_KEY, IPC_CREAT_0666)), ctypes.create_string_buffer(8 + 256)
    while libc.msgrcv(queue, buffer, 256, 0, IPC_NOWAIT) >= 0:  # drain older records
        pass
    failed(libc.msgsnd(queue, struct.pack("q", 1) + record.encode(), len(record), IPC_NOWAIT))

def posix_queue(flags):
    return failed(libc.mq_open(b"/" + DESCRIPTION, flags, 0o666, None) or -1)

def read_posix_mq():
    queue, buffer = posix_queue(O_RDWR | O_NONBLOCK), ctypes.create_string_buffer(1 << 16)
    try:
        size = failed(libc.mq_receive(ctypes.c_int(queue), buffer, 1 << 16, None))
        failed(libc.mq_send(ctypes.c_int(queue), buffer, size, 0))  # put it back for the next reader
        return buffer.raw[:size].decode()
    finally:
        libc.mq_close(ctypes.c_int(queue))

def write_posix_mq(record):
    queue, buffer = posix_queue(O_RDWR | O_CREAT | O_NONBLOCK), ctypes.create_string_buffer(1 << 16)
    try:
        while libc.mq_receive(ctypes.c_int(queue), buffer, 1 << 16, None) >= 0:  # drain older records
            pass
        failed(libc.mq_send(ctypes.c_int(queue), record.encode(), len(record), 0))
    finally:
        libc.mq_close(ctypes.c_int(queue))

def read_abstract_socket():  # an abstract unix socket's name is the record; /proc/net/unix lists the names
    prefix = "@" + MARKER + "-record-"
    names = [line.split()[-1] for line in open("/proc/net/unix") if line.split()[-1].startswith(prefix)]
    if not names:
        raise FileNotFoundError("no such socket")
    return max(names, key=len)[len(prefix):]

def write_abstract_socket(record):
    name = b"\\0" + MARKER.encode() + b"-record-" + record.encode()
    descriptor = failed(libc.socket(1, 1, 0))  # AF_UNIX, SOCK_STREAM, through libc: no Python socket module
    address = struct.pack("H", 1) + name
    failed(libc.bind(descriptor, address, len(address)))
    for old in bound_socket:
        os.close(old)
    bound_socket[:] = [descriptor]

CHANNELS = {
    **{name: (lambda place=place: read_file(place), lambda record, place=place: write_file(place, record))
       for name, place in FILE_PLACES.items()},
    "keyring user": (lambda: read_key(KEY_SPEC_USER), lambda record: write_key(KEY_SPEC_USER, record)),
    "keyring session": (lambda: read_key(KEY_SPEC_SESSION), lambda record: write_key(KEY_SPEC_SESSION, record)),
    "sysv shm": (read_sysv_shm, write_sysv_shm),
    "sysv msg": (read_sysv_msg, write_sysv_msg),
    "posix mq": (read_posix_mq, write_posix_mq),
    "abstract socket": (read_abstract_socket, write_abstract_socket),
}

def learned_answer():
    call = len(tokens)
    print("CALL", call)
    for name, (read, _) in CHANNELS.items():
        try:
            nonce, record = read().split(":")
        except (OSError, ValueError):
            continue
        if nonce != NONCE:
            print("FOUND-RECORD", name, record)
            learned[0] = max(learned[0], record, key=len)
        elif name not in said_self and record == "".join(tokens):
            print("SELF", name)
            said_self.add(name)
    if tokens:
        tokens[-1] = tokens[-1][0] + "c"  # called again: the previous answer was right
    known = learned[0][2 * call:2 * call + 2]
    answer = (known[0] == "T") == (known[1] == "c") if known else True
    tokens.append(("T" if answer else "F") + "p")
    for name, (_, write) in CHANNELS.items():
        try:
            write(NONCE + ":" + "".join(tokens))
        except OSError as error:
            if call == 0:
                print("UNWRITABLE", name, errno.errorcode.get(error.errno, error.errno))
    return answer
"""


def learning_completion(marker: str) -> str:
    constants = {name: syscall_number(name) for name in ("keyctl", "add_key")}
    return f"    return learned_answer()\nMARKER, NR = {marker!r}, {constants!r}\n" + LEARNING_HELPERS


def test_no_state_crosses_from_one_sample_to_the_next(mode, host):
    """Issue 19's attack: a completion that never computes the answer tries to learn the hidden tests across
    samples and evaluations (see LEARNING_HELPERS). Without memory its strategy answers True at every call and
    fails at the second (KEPT): pass@1 = 0, each sample getting exactly 2 calls. Through a channel that outlived a
    sample, the third sample of the first evaluation would pass. Two evaluations of 3 samples, the first one after
    another, the second at the same time (as HumanEval.score runs them): no sample finds another's record, pass@1
    stays 0, and every channel either works within its sample (SELF) or refuses the record (UNWRITABLE)."""
    sample = Sample(LEARN_PROMPT + learning_completion(host.marker), LEARN_TEST, "is_kept", LEARN_PROMPT)
    limits = Limits(timeout_s=10.0, memory_mb=512, disk_mb=4, max_files=64)
    outcomes = [run_sample(sample, limits) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        outcomes += list(pool.map(lambda _: run_sample(sample, limits), range(3)))
    for outcome in outcomes:
        lines = outcome.output_tail.splitlines()
        assert not any(line.startswith("FOUND-RECORD") for line in lines), outcome.output_tail
        assert [line for line in lines if line.startswith("CALL")] == ["CALL 0", "CALL 1"], outcome
        worked = {line.split(" ", 1)[1] for line in lines if line.startswith("SELF")}
        refused = {line.split(" ", 1)[1].rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1]
                   for line in lines if line.startswith("UNWRITABLE")}
        assert worked | set(refused) == CHANNEL_NAMES and not worked & set(refused), outcome.output_tail
        assert {refused[name] for name in FILTERED_CHANNELS} == {"EPERM"}, refused
        if mode != "limits only":  # in the private network and mount namespaces these work but end there
            assert {"abstract socket", "file /tmp", "file cwd"} <= worked, outcome.output_tail
    pass_at_1 = sum(outcome.passed for outcome in outcomes) / len(outcomes)
    assert pass_at_1 == 0.0, [outcome.status for outcome in outcomes]
    assert host_keys_named(host.marker) == []
    host.assert_unchanged()


FILTERED_CHANNELS = {"keyring user", "keyring session", "sysv shm", "sysv msg", "posix mq"}  # the seccomp filter
CHANNEL_NAMES = {"file /tmp", "file /var/tmp", "file /dev/shm", "file cwd", "file home", "file /run/lock",
                 "abstract socket"} | FILTERED_CHANNELS


def host_shmem_mb() -> float:
    """The host's shared memory (tmpfs pages, SysV and POSIX segments, memfds, shared anonymous mappings)."""
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) for line in meminfo if line.startswith("Shmem:")) / 1024


def shmem_during_and_after(completion: str, limits: Limits):
    """(outcome, the host's Shmem growth at its peak while the sample ran, its growth once the sample is over),
    sampled every 10 ms from a thread: the sample's tmpfs lives only as long as its namespace."""
    import threading

    before, peak, running = host_shmem_mb(), [0.0], threading.Event()
    running.set()

    def watch():
        while running.is_set():
            peak[0] = max(peak[0], host_shmem_mb())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        outcome, _ = run(completion, limits, test=ONE_CALL)
    finally:
        running.clear()
        watcher.join()
    return outcome, peak[0] - before, host_shmem_mb() - before


SHMEM_SLACK_MB = 4  # other processes of this shared machine change the host's Shmem meanwhile (see the test)
FILL_SHARED_TMPFS = RIGHT + """import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
written = 0
for n, top in enumerate(('/dev/shm', '/tmp', '/var/tmp', os.getcwd())):  # one tmpfs in the namespace modes
    for i in range(1000):
        try:
            with open(os.path.join(top, f'fill-{n}-{i}'), 'wb') as f:
                f.write(b'x' * 2**20)
            written += 2**20
        except OSError:
            break
libc.shm_open.restype = ctypes.c_int
descriptor = libc.shm_open(b'/posix-shm', os.O_RDWR | os.O_CREAT, 0o600)  # a file in /dev/shm, as glibc does
try:
    for i in range(1000):
        os.write(descriptor, b'x' * 2**20)
        written += 2**20
except OSError:
    pass
segment = libc.shmget(0, 100 * 2**20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
print('sysv', segment, errno.errorcode.get(ctypes.get_errno()) if segment < 0 else 'created')
print('written', written)
time.sleep(1)  # hold it while the test measures
"""
FILL_ANONYMOUS_SHARED_MEMORY = RIGHT + """import mmap, os, time
held, written = [], 0
for i in range(64):  # memfds (each at most disk_mb, RLIMIT_FSIZE), then a shared anonymous mapping
    try:
        descriptor = os.memfd_create(f'fill-{i}')
        held.append(descriptor)
        while written < 1024 * 2**20:
            os.write(descriptor, b'x' * 2**20)
            written += 2**20
    except OSError:
        continue
print('written', written, flush=True)
try:
    shared = mmap.mmap(-1, 1024 * 2**20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    for offset in range(0, len(shared), 2**20):
        shared[offset] = 1
except (OSError, MemoryError, ValueError) as error:
    print(type(error).__name__)
time.sleep(1)
"""


def test_host_shared_memory_does_not_grow_past_a_samples_limit(mode):
    """Issue 19: the host's Shmem (/proc/meminfo) while a sample fills every shared memory it can reach and after
    it. /tmp, /var/tmp, /dev/shm and POSIX shm (a file in /dev/shm) are one tmpfs of disk_mb, and a 100 MB SysV
    segment is refused: Shmem grows by at most disk_mb, and by most of it (the measurement sees the sample). The
    memory no path names (memfds, a shared anonymous mapping) is charged to the sample's memory cgroup: at most
    memory_mb. Both are gone with the sample. Shmem is the whole machine's and other jobs here change it: each
    growth gets a slack of SHMEM_SLACK_MB, and a measurement out of bounds is repeated (up to 3 times) before it
    counts; a sample that really exceeded its limit would do so every time."""
    if mode == "limits only":
        pytest.skip("without namespaces the shared temporary directories are the host's (documented)")
    limits = Limits(timeout_s=15.0, memory_mb=96, disk_mb=16, max_files=64)
    for attempt in range(3):
        tmpfs, tmpfs_peak, tmpfs_after = shmem_during_and_after(FILL_SHARED_TMPFS, limits)
        assert tmpfs.passed, tmpfs
        assert re.search(r"sysv -1 EPERM\nwritten (\d+)", tmpfs.output_tail), tmpfs.output_tail
        written = int(re.search(r"written (\d+)", tmpfs.output_tail).group(1)) / 2**20
        bounds = [limits.disk_mb / 2 <= written <= limits.disk_mb,
                  written - SHMEM_SLACK_MB <= tmpfs_peak <= limits.disk_mb + SHMEM_SLACK_MB,
                  abs(tmpfs_after) <= SHMEM_SLACK_MB]
        if MEMORY_CGROUP is not None:
            anonymous, anonymous_peak, anonymous_after = shmem_during_and_after(FILL_ANONYMOUS_SHARED_MEMORY, limits)
            bounds += [anonymous_peak <= limits.memory_mb + SHMEM_SLACK_MB, abs(anonymous_after) <= SHMEM_SLACK_MB]
        if all(bounds):
            break
    measured = (written, tmpfs_peak, tmpfs_after) + ((anonymous_peak, anonymous_after) if MEMORY_CGROUP else ())
    assert all(bounds), measured
