"""Child processes that cannot outlive their parent, and stopping them by PID.

The one implementation of this for run.py, the private Redis, the tests and the benchmark.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with(parent: int) -> Callable[[], None]:
    def die_with_parent() -> None:
        # Runs in the child between fork and exec: when the parent dies (even by SIGKILL) the
        # kernel sends SIGTERM here, so no web, worker or Redis is left behind. The parent may
        # have died before prctl took effect (we would have been re-parented already): then
        # this child must not start at all.
        if _LIBC is not None and _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os._exit(1)

    return die_with_parent


def spawn(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    cwd: Path | str | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a child in its own session (a terminal's Ctrl-C reaches only the parent) that
    gets SIGTERM when the parent dies (Linux). Call it from the main thread: the kernel ties
    the signal to the thread that started the child, not to the process."""
    return subprocess.Popen(
        list(args),
        env=dict(env) if env is not None else None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        preexec_fn=_die_with(os.getpid()),  # noqa: PLW1509 - it only calls prctl and getppid
    )


def wait_until(
    condition: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.02, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; TimeoutError
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not met within {timeout_s}s: {what or condition}")
        time.sleep(interval_s)


def stop(process: subprocess.Popen[Any], timeout_s: float = 5.0, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` (SIGTERM), then SIGKILL if it is still running after ``timeout_s``;
    returns its exit status."""
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
