"""sandbox.py holds: each attack a model's code could make is contained, scored as a failure,
and the evaluator goes on."""

import os
import socket
import subprocess
import sys

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
    left = subprocess.run(["pgrep", "-u", "nobody"], capture_output=True, text=True).stdout.split()
    assert left == []


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
