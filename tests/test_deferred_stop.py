"""protocol.processes.DeferredStop and python_handlers_kept, which the Ray engines rely on: a
stop signal inside a native call is only noted and raised at the next check (exit 128+N), a
second signal exits at once, and handlers replaced inside a block come back after it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from protocol import processes

ROOT = Path(__file__).resolve().parents[1]


def test_a_signal_is_raised_at_the_next_check_not_where_it_arrived() -> None:
    with processes.DeferredStop("test", "stopping the test") as stop:
        # Handled right here, in the main thread; raising here would fail the test.
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(processes.Stopped) as caught:
            stop.check()
    assert caught.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is not stop._note  # restored on exit


def test_a_second_signal_exits_at_once() -> None:
    code = textwrap.dedent("""
        import os, signal, time
        from protocol import processes
        with processes.DeferredStop("child") as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        raise SystemExit(0)
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 128 + signal.SIGINT
    assert "child: received SIGTERM; stopping; exiting with code 143" in result.stderr


def test_python_handlers_come_back_after_a_library_replaced_them() -> None:
    def ours(signum: int, frame: object) -> None:  # pragma: no cover - never called
        raise AssertionError

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        with processes.python_handlers_kept():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what ray.init does, natively
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
