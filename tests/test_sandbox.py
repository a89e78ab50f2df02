"""sandbox.py holds: each attack a model's code could make is contained, scored as a failure,
and the evaluator goes on."""

import errno
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import sandbox

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox uses Linux namespaces and limits")
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges and namespaces need root; "
                               "as a user the sandbox reports these as unenforced")


def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok = sandbox.run("print('hello')")
    assert ok.passed and ok.status == "passed" and ok.stdout == "hello\n"
    bad = sandbox.run("assert 1 + 1 == 3")
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.stderr


def test_endless_loop_and_sleep_are_stopped():
    spin = sandbox.run("while True:\n    pass\n", timeout=5, cpu_seconds=1)
    assert not spin.passed and spin.status == "killed by SIGXCPU"
    sleep = sandbox.run("import time\ntime.sleep(60)\n", timeout=1)
    assert not sleep.passed and sleep.status == "timeout"


def test_memory_bomb():
    r = sandbox.run("x = bytearray(16 * 1024 ** 3)\nprint('allocated')", memory_mb=512)
    assert not r.passed and "MemoryError" in r.stderr and "allocated" not in r.stdout


def test_output_is_capped():
    r = sandbox.run("import sys\nsys.stdout.write('x' * 5_000_000)\nsys.stdout.flush()", output_bytes=100_000)
    assert not r.passed and len(r.stdout) <= 100_000


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    code = ("import os\nprint(sorted(os.environ))\n"
            "try:\n    print(open(f'/proc/{os.getppid()}/environ', 'rb').read())\nexcept OSError as e:\n    print('denied', e)\n")
    r = sandbox.run(code)
    assert "hunter2" not in r.stdout and "SECRET_TOKEN" not in r.stdout


@root_only
def test_fork_bomb_is_bounded_and_its_group_killed():
    r = sandbox.run("import os\nfor _ in range(10_000):\n    os.fork()\n", timeout=10)
    assert not r.passed and "BlockingIOError" in r.stderr
    assert [p for p in _processes() if p["uid"] in sandbox.UIDS] == []


@root_only
def test_subprocess_is_refused():
    r = sandbox.run("import subprocess\nsubprocess.run(['true'], check=True)\nprint('ran')")
    assert not r.passed and "ran" not in r.stdout


@root_only
def test_writes_and_deletions_outside_the_working_directory(tmp_path):
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    outside = "/root/sandbox-escape.txt"
    code = (f"import os\nfor action in (lambda: open({str(precious)!r}, 'w').write('gone'),\n"
            f"               lambda: os.remove({str(precious)!r}),\n"
            f"               lambda: open({outside!r}, 'w').write('escaped')):\n"
            "    try:\n        action()\n        print('did it')\n    except OSError as e:\n        print('refused', type(e).__name__)\n"
            "open('/tmp/scratch.txt', 'w').write('private tmp')\nopen('inside.txt', 'w').write('ok')\n")
    r = sandbox.run(code)
    assert r.passed and "did it" not in r.stdout and r.stdout.count("refused") == 3
    assert precious.read_text() == "keep me" and not os.path.exists(outside)
    assert not os.path.exists("/tmp/scratch.txt")              # its /tmp was a private tmpfs


@root_only
def test_no_network():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\nprint('connected')"
        r = sandbox.run(code)
        assert not r.passed and "connected" not in r.stdout
        with pytest.raises(socket.timeout):
            listener.accept()


@root_only
def test_cannot_kill_the_evaluator():
    r = sandbox.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('killed it')")
    assert not r.passed and "PermissionError" in r.stderr
    assert sandbox.run("print('still here')").stdout == "still here\n"     # and we go on


def _processes():
    """Every process on the host as {pid, ppid, uid (real), state, cmdline}."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text().splitlines())
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue                                    # it ended while we looked
        found.append({"pid": int(entry), "ppid": int(status["PPid"]), "uid": int(status["Uid"].split()[0]),
                      "state": status["State"].split()[0], "cmdline": cmdline})
    return found


def _alive(pid):
    return any(p["pid"] == pid and p["state"] != "Z" for p in _processes())


@root_only
def test_system_v_ipc_does_not_outlive_the_run():
    key = random.randrange(1 << 20, 1 << 30)
    code = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"print(libc.shmget({key}, 1 << 20, 0o1666), libc.msgget({key}, 0o1666), libc.semget({key}, 1, 0o1666))\n")
    r = sandbox.run(code)
    leaked = {kind: any(line.split()[0] == str(key) for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:])
              for kind in ("shm", "msg", "sem")}
    libc = __import__("ctypes").CDLL(None, use_errno=True)      # clean up what the old code leaked
    for kind, get, ctl in (("shm", lambda: libc.shmget(key, 0, 0), lambda i: libc.shmctl(i, 0, None)),
                           ("msg", lambda: libc.msgget(key, 0), lambda i: libc.msgctl(i, 0, None)),
                           ("sem", lambda: libc.semget(key, 0, 0), lambda i: libc.semctl(i, 0, 0))):
        if leaked[kind]:
            ctl(get())
    assert r.passed and all(int(i) >= 0 for i in r.stdout.split()), r.stdout + r.stderr   # it made all three
    assert not any(leaked.values()), leaked


def test_concurrent_runs_all_pass():
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: sandbox.run(f"import time\ntime.sleep(0.3)\nprint({i})"), range(4)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(4)], [r.stderr for r in results]


@root_only
def test_one_sandbox_cannot_kill_another():
    sleeper = {}
    thread = threading.Thread(target=lambda: sleeper.update(r=sandbox.run("import time\ntime.sleep(1)\nprint('survived')")))
    thread.start()
    time.sleep(0.3)
    killer = sandbox.run("import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept OSError as e:\n    print(type(e).__name__)\n")
    thread.join()
    assert killer.passed and sleeper["r"].stdout == "survived\n", (killer, sleeper)


def test_the_program_dies_with_the_evaluator():
    root = str(Path(sandbox.__file__).parent)
    evaluator = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {root!r}); import sandbox; "
                                  "sandbox.run('import time\\ntime.sleep(60)', timeout=120)"])
    program = None
    try:
        deadline = time.time() + 20
        while program is None and time.time() < deadline:
            program = next((p["pid"] for p in _processes() if p["ppid"] == evaluator.pid
                            and b"program.py" in p["cmdline"]), None)
            time.sleep(0.02)
        assert program is not None, "the sandboxed program never started"
        evaluator.kill()
        evaluator.wait()
        deadline = time.time() + 2
        while _alive(program) and time.time() < deadline:
            time.sleep(0.02)
        assert not _alive(program), "the program outlived its evaluator"
        assert sandbox.run("print('next')").passed
        assert list(Path(tempfile.gettempdir()).glob(f"llmpipe-sandbox-{evaluator.pid}-*")) == []
    finally:
        evaluator.kill()
        if program is not None and _alive(program):
            os.kill(program, 9)


def test_stale_working_directories_are_swept(tmp_path, monkeypatch):
    """Without namespaces (an ordinary user) the working directory lives on the host, named
    for the evaluator's pid; one whose evaluator is dead is removed by the next run."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sandbox, "privileged", lambda: False)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, live = tmp_path / f"llmpipe-sandbox-{dead.pid}-abc", tmp_path / f"llmpipe-sandbox-{os.getpid()}-def"
    for d in (stale, live):
        d.mkdir()
        (d / "program.py").write_text("left behind")
    r = sandbox.run("print('ok')")
    assert r.passed and r.unenforced and not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]         # its own is gone too


@root_only
def test_the_working_directory_has_a_quota():
    code = ("import errno, os\nn = 0\ntry:\n    for n in range(60):\n        open(f'f{n}', 'wb').write(b'x' * 900_000)\n"
            "except OSError as e:\n    print('bytes', n, errno.errorcode[e.errno])\n"
            "for n in range(60):\n    if os.path.exists(f'f{n}'):\n        os.remove(f'f{n}')\n"
            "try:\n    for n in range(100_000):\n        open(f'/tmp/e{n}', 'w').close()\n"
            "except OSError as e:\n    print('files', n, errno.errorcode[e.errno])\n")
    r = sandbox.run(code)
    words = r.stdout.split()
    assert words[0::3] == ["bytes", "files"] and words[2::3] == ["ENOSPC", "ENOSPC"], r.stdout + r.stderr
    assert int(words[1]) * 0.9 <= 64 and int(words[4]) < 100_000          # at most 64 MB, and inodes run out


def test_the_quota_is_a_positive_size():
    with pytest.raises(ValueError, match="disk_mb"):
        sandbox.run("pass", disk_mb=0)                          # tmpfs would take 0 as no limit at all
    if os.geteuid() == 0:
        r = sandbox.run("for n in range(8):\n    open(f'f{n}', 'wb').write(b'x' * 900_000)\n", disk_mb=4)
        assert not r.passed and "No space left on device" in r.stderr


@root_only
def test_host_unix_sockets_are_unreachable():
    where = Path(tempfile.mkdtemp(dir="/run"))
    try:
        where.chmod(0o755)
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(where / "s.sock"))
            (where / "s.sock").chmod(0o777)
            listener.listen(1)
            listener.settimeout(0.2)
            code = (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(where / 's.sock')!r})\n"
                    "s.sendall(b'hi')\nprint('connected')")
            r = sandbox.run(code)
            assert not r.passed and "connected" not in r.stdout
            with pytest.raises(socket.timeout):
                listener.accept()
    finally:
        shutil.rmtree(where)


@root_only
def test_host_files_are_hidden():
    files = [sandbox.__file__, "/etc/passwd", "/etc/hostname", "/proc/1/cmdline"]
    dirs = ["/home", "/root", "/run", "/etc", "/var", "/srv", "/mnt", "/proc", os.getcwd(), str(Path(sandbox.__file__).parent)]
    code = (f"import os\nfor p in {files!r}:\n    try:\n        open(p).read(1)\n        print('read', p)\n"
            "    except OSError:\n        pass\n"
            f"for d in {dirs!r}:\n    try:\n        print('listed', d, os.listdir(d))\n    except OSError:\n        pass\n"
            "print('sees', sorted(os.listdir('/')))\n")
    r = sandbox.run(code)
    assert r.passed and "read" not in r.stdout and "listed" not in r.stdout, r.stdout + r.stderr


@pytest.fixture
def fresh_probe():
    sandbox.isolation.cache_clear()
    yield sandbox.isolation
    sandbox.isolation.cache_clear()


@root_only
def test_a_jail_that_cannot_be_set_up_is_unmistakable(monkeypatch, fresh_probe):
    def refuse(flags):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    monkeypatch.setattr(sandbox, "_unshare", refuse)
    r = sandbox.run("print('ran')")
    assert r.status == "not isolated" and not r.passed and "ran" not in r.stdout
    assert "Operation not permitted" in r.stderr and r.unenforced
    gaps = fresh_probe()
    assert gaps == r.unenforced and any(g.startswith("network: ") for g in gaps)


def test_the_probe_says_what_is_enforced(monkeypatch, fresh_probe):
    if os.geteuid() == 0:
        assert fresh_probe() == []                                  # the full jail
    monkeypatch.setattr(sandbox, "privileged", lambda: False)
    sandbox.isolation.cache_clear()
    gaps = fresh_probe()
    assert {g.split(":")[0] for g in gaps} >= {"network", "file system", "own uid"}
    assert sandbox.run("print(1)").unenforced == gaps


def test_a_uid_that_a_process_still_has_is_not_leased(monkeypatch):
    """A killed fork bomb's children may linger as zombies under their uid (a container's init
    reaps slowly); they count against RLIMIT_NPROC, so a run given that uid could not start."""
    free = sandbox.UIDS[123]
    monkeypatch.setattr(sandbox, "_uids_in_use", lambda: set(sandbox.UIDS) - {free})
    uid, lease = sandbox._lease_uid()
    lease.close()
    assert uid == free


def test_the_uids_in_use_include_ours():
    assert os.getuid() in sandbox._uids_in_use()
