"""Interrupting a run at a known point, for the kill-and-resume and Ctrl-C tests."""

import time


def signal_once_written(proc, path, sig, timeout=120):
    """Send `sig` to the running `proc` as soon as `path` exists (its first checkpoint), or
    after `timeout` seconds; the caller waits for the process and checks how it ended."""
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
