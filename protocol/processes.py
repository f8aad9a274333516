"""Child processes that never outlive the command that started them. Pure stdlib.

Every command that starts processes (the batch renderer's worker pool, the demo's stages, the
daemon) uses this one module:

- :func:`install_stop_handlers` (or the :func:`stop_handlers` context manager) makes SIGTERM,
  SIGINT and SIGHUP stop the tracked children at once (SIGTERM, then SIGKILL after
  ``grace_s``), log one line, and raise :class:`Stopped` in the main thread, so ``finally``
  blocks run and the command exits with ``128 + signum`` (``protocol.cli.run_main`` turns
  ``Stopped`` into that exit code). Python's default SIGTERM action raises nothing, so
  without this the cleanup in ``finally``/``except`` blocks never ran.
- :func:`popen` starts a tracked ``subprocess.Popen`` whose child gets a parent-death signal
  (``prctl(PR_SET_PDEATHSIG)`` through ctypes on Linux): if the parent is killed with
  SIGKILL, the kernel sends the child SIGTERM.
- :func:`die_with_parent` does the same from inside a child (a multiprocessing worker's
  initializer, or a worker command's first line): the parent-death signal where the platform
  has one, plus a watchdog thread that notices the parent pid changing.
- :func:`track` / :func:`untrack` / :func:`stop_children` manage the set of children by hand
  (``multiprocessing.Process`` objects work too).
- :func:`pid_alive` and :func:`descendants` read ``/proc`` (psutil is not a dependency).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

STOP_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))
GRACE_S = 1.0  # SIGTERM, then SIGKILL after this long: children are gone well within 2 s
_PR_SET_PDEATHSIG = 1

_lock = threading.Lock()
_children: list[Any] = []  # Popen or multiprocessing.Process objects


class Stopped(BaseException):
    """Raised in the main thread when a stop signal arrived (a BaseException, like
    KeyboardInterrupt, so ``except Exception`` does not swallow it)."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(f"stopped by {signal_name(self.signum)}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# --------------------------------------------------------------------------- tracking

def track(child: Any) -> Any:
    """Remember a child (Popen or multiprocessing.Process) so a stop signal ends it."""
    with _lock:
        if child not in _children:
            _children.append(child)
    return child


def untrack(child: Any) -> None:
    with _lock:
        if child in _children:
            _children.remove(child)


def children() -> list[Any]:
    """The tracked children that are still running."""
    with _lock:
        return [c for c in _children if _running(c)]


def tracked() -> list[Any]:
    """Every tracked child, running or not (a snapshot)."""
    with _lock:
        return list(_children)


def _running(child: Any) -> bool:
    if hasattr(child, "poll"):
        return child.poll() is None
    return bool(child.is_alive())


def _wait(child: Any, timeout: float) -> None:
    with contextlib.suppress(Exception):
        if hasattr(child, "poll"):
            child.wait(timeout=max(0.0, timeout))
        else:
            child.join(max(0.0, timeout))


def stop_children(grace_s: float = GRACE_S, which: Sequence[Any] | None = None) -> int:
    """Terminate the tracked children (or ``which``), SIGKILL those still alive after
    ``grace_s``, reap them and forget them. Returns how many were running."""
    with _lock:
        targets = list(_children if which is None else which)
    live = [c for c in targets if _running(c)]
    for child in live:
        with contextlib.suppress(Exception):
            child.terminate()
    deadline = time.monotonic() + grace_s
    for child in live:
        _wait(child, deadline - time.monotonic())
    for child in live:
        if _running(child):
            with contextlib.suppress(Exception):
                child.kill()
            _wait(child, 1.0)
    with _lock:
        for child in targets:
            if child in _children:
                _children.remove(child)
    return len(live)


# --------------------------------------------------------------------------- signals

_stopping = threading.Event()


def install_stop_handlers(name: str | None = None, *, signals: Sequence[int] = STOP_SIGNALS,
                          grace_s: float = GRACE_S,
                          on_stop: Callable[[int], None] | None = None,
                          exit_after_s: float | None = None) -> Callable[[], None]:
    """Handle ``signals``: stop every tracked child, log one line on stderr, then raise
    :class:`Stopped` (or, with ``on_stop``, call ``on_stop(signum)`` instead, e.g. to set an
    event a server loop watches). A second signal while stopping exits at once with
    ``128 + signum``.

    ``exit_after_s``: 0 exits at once with ``os._exit(128 + signum)`` (for workers whose
    outputs are written atomically, and code such as Blender's render loop that swallows
    exceptions raised in callbacks); a positive value raises as usual but exits hard that
    many seconds later if the process is still running. Returns a function that restores the
    previous handlers. Outside the main thread (where Python allows no handlers) this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    label = name or os.path.basename(sys.argv[0] or "command")
    _stopping.clear()

    def handler(signum: int, _frame: Any) -> None:
        if _stopping.is_set():
            stop_children(0.0)
            os._exit(128 + signum)
        _stopping.set()
        stopped = stop_children(grace_s)
        print(f"{label}: received {signal_name(signum)}; stopped {stopped} child "
              f"process{'es' if stopped != 1 else ''}; exiting with code {128 + signum}",
              file=sys.stderr, flush=True)
        if exit_after_s is not None:
            if exit_after_s <= 0:
                os._exit(128 + signum)
            _exit_later(exit_after_s, 128 + signum)
        if on_stop is not None:
            on_stop(signum)
            return
        raise Stopped(signum)

    previous = {}
    for signum in signals:
        with contextlib.suppress(OSError, ValueError):
            previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, old if old is not None else signal.SIG_DFL)
        _stopping.clear()

    return restore


def _exit_later(seconds: float, code: int) -> None:
    def exit_now() -> None:
        time.sleep(seconds)
        stop_children(0.0)
        os._exit(code)

    threading.Thread(target=exit_now, name="stop-deadline", daemon=True).start()


@contextlib.contextmanager
def stop_handlers(name: str | None = None, **kwargs: Any) -> Iterator[None]:
    """:func:`install_stop_handlers` for the duration of a ``with`` block; tracked children
    are stopped when the block exits, however it exits."""
    restore = install_stop_handlers(name, **kwargs)
    try:
        yield
    finally:
        stop_children()
        restore()


def run_until_stopped(name: str, work: Callable[[Callable[[], bool]], Any]) -> tuple[Any, int | None]:
    """Run ``work(should_stop)`` so that a stop signal ends it gracefully: the signal only sets
    a flag that ``should_stop()`` reports, so a training loop finishes its step and saves a
    checkpoint (a second signal exits at once). Returns ``(result, signum or None)``."""
    received: list[int] = []
    restore = install_stop_handlers(name, on_stop=received.append)
    try:
        result = work(lambda: bool(received))
    finally:
        restore()
    return result, (received[0] if received else None)


class DeferredStop:
    """Stop signals noted, then raised as :class:`Stopped` at a safe point (:meth:`check`).

    For loops that spend their time inside native calls that must not be interrupted by a
    Python exception (``ray.wait``: raising from a signal handler there turns into a
    SystemError). ``with DeferredStop("render") as stop: ... stop.check() ...``. The first
    signal logs one line; a second exits at once with ``128 + signum``."""

    def __init__(self, name: str, action: str = "stopping") -> None:
        self.name, self.action = name, action
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                with contextlib.suppress(OSError, ValueError):
                    self._previous[signum] = signal.signal(signum, self._note)
        return self

    def _note(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        print(f"{self.name}: received {signal_name(signum)}; {self.action}; exiting with code "
              f"{128 + signum}", file=sys.stderr, flush=True)

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def python_handlers_kept(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Put this process's Python signal handlers back after the block: some libraries (Ray's
    ``ray.init``) install native handlers that replace them and exit without any cleanup."""
    saved = ({signum: signal.getsignal(signum) for signum in signals}
             if threading.current_thread() is threading.main_thread() else {})
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:
                with contextlib.suppress(OSError, ValueError, TypeError):
                    signal.signal(signum, handler)


# --------------------------------------------------------------------------- parent death

def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def set_pdeathsig(signum: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``). Returns False where that is not available."""
    libc = _libc()
    if libc is None:
        return False
    return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0


def pdeathsig_preexec(signum: int = signal.SIGTERM,
                      then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``signum`` when the parent
    dies, and kills itself if the parent already died before the prctl took effect."""
    parent = os.getpid()

    def preexec() -> None:
        set_pdeathsig(signum)
        if os.getppid() != parent:
            os.kill(os.getpid(), signum)
        if then is not None:
            then()

    return preexec


def popen(argv: Sequence[str], *, pdeathsig: int | None = signal.SIGTERM,
          **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` for a child that must not outlive this process: tracked (a stop
    signal ends it) and, on Linux, given a parent-death signal (``kill -9`` of this process
    ends it too). Untrack it with :func:`untrack` once it has been waited for, or let
    :func:`stop_children` forget it."""
    if pdeathsig is not None and sys.platform.startswith("linux"):
        kwargs["preexec_fn"] = pdeathsig_preexec(pdeathsig, kwargs.get("preexec_fn"))
    process = subprocess.Popen(list(argv), **kwargs)
    track(process)
    return process


def watch_parent(interval_s: float = 0.5, signum: int = signal.SIGTERM,
                 parent_pid: int | None = None) -> threading.Thread:
    """A daemon thread that sends this process ``signum`` when its parent goes away (its
    parent pid changes: orphans are re-parented), and ``os._exit``s 2 s later if that did
    not end it. Works where the parent-death signal does not (other platforms, a parent
    thread that exited)."""
    expected = os.getppid() if parent_pid is None else parent_pid

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != expected:
                with contextlib.suppress(OSError):
                    os.kill(os.getpid(), signum)
                time.sleep(2.0)
                os._exit(128 + signum)

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread


def die_with_parent(signum: int = signal.SIGTERM, interval_s: float = 0.5) -> None:
    """Call first thing in a child process (a worker command, a multiprocessing
    ``initializer``): end when the parent dies, by the parent-death signal and a watchdog."""
    set_pdeathsig(signum)
    watch_parent(interval_s, signum)


# --------------------------------------------------------------------------- /proc

def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), read from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] in ("Z", "X"):
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        for child in parents.get(current, []):
            found.append(child)
            frontier.append(child)
    return found


__all__ = [
    "GRACE_S",
    "STOP_SIGNALS",
    "DeferredStop",
    "Stopped",
    "children",
    "descendants",
    "die_with_parent",
    "install_stop_handlers",
    "pdeathsig_preexec",
    "pid_alive",
    "popen",
    "python_handlers_kept",
    "run_until_stopped",
    "set_pdeathsig",
    "signal_name",
    "stop_children",
    "stop_handlers",
    "track",
    "tracked",
    "untrack",
    "watch_parent",
]
