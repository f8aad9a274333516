"""The one error and stop contract of every command line of the project. Pure stdlib.

``run_main(main, argv)`` runs ``main(argv) -> int`` so that:

- bad input (``ValueError`` and its subclasses such as ``ConfigError``, ``DatasetError``,
  ``AnnotationError``, :class:`CliError`, and ``OSError`` such as a missing file or an
  unreadable image) prints ONE line ``error: <what>, <where>, <how to fix>`` on stderr and
  returns 2;
- any other exception prints one line naming it as an internal error and returns 1;
- the traceback is printed too only with ``--debug`` on the command line (removed before
  ``main`` sees it) or ``FISHEYE_DEBUG=1`` in the environment;
- SIGTERM, SIGINT and SIGHUP stop every child started through ``protocol.processes``, log one
  line and return ``128 + signum`` (``finally`` blocks run on the way out);
- the children ``main`` started (tracked by ``protocol.processes``) are stopped whenever it
  returns or raises; children tracked before the call are left alone (a stop signal ends all).

Use it as ``def main(argv=None): return run_main(_main, argv, prog="...")``, or for an entry
point's ``__main__`` block: ``raise SystemExit(run_main(main))``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from protocol import processes

DEBUG_FLAG = "--debug"
DEBUG_ENV = "FISHEYE_DEBUG"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class CliError(Exception):
    """Bad input a command reports in one line; ``exit_code`` 2 unless told otherwise."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


BAD_INPUT: tuple[type[BaseException], ...] = (CliError, ValueError, OSError)


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    """``--debug`` in ``argv`` or ``FISHEYE_DEBUG`` set to something other than 0/empty."""
    return (DEBUG_FLAG in (argv or [])
            or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no"))


def describe(exc: BaseException) -> str:
    """The one-line message for an exception: its text, with the file an ``OSError`` names."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
        if exc.filename2 is not None:
            text += f" -> {exc.filename2}"
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:  # str(KeyError) is just the quoted key
        text = f"missing key {exc.args[0]!r}"
    return " ".join(text.split())  # one line


def print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)


def run_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *,
             prog: str | None = None, handle_signals: bool = True,
             bad_input: tuple[type[BaseException], ...] = BAD_INPUT) -> int:
    """Run ``main(argv)`` under the error and stop contract (module docstring); returns the
    exit code. ``argv`` defaults to ``sys.argv[1:]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(args)
    args = [a for a in args if a != DEBUG_FLAG]
    restore = processes.install_stop_handlers(prog) if handle_signals else (lambda: None)
    before = processes.tracked()
    try:
        code = main(args)
        return int(code or 0)
    except processes.Stopped as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        stopped = processes.stop_children(which=[c for c in processes.tracked() if c not in before])
        print(f"{prog or 'command'}: interrupted; stopped {stopped} child processes",
              file=sys.stderr, flush=True)
        return 130
    except SystemExit:
        raise
    except bad_input as exc:
        if debug:
            traceback.print_exc()
        print_error(describe(exc))
        return int(getattr(exc, "exit_code", EXIT_BAD_INPUT))
    except Exception as exc:  # noqa: BLE001 - the contract: one line, traceback under --debug
        if debug:
            traceback.print_exc()
        print_error(f"internal error {type(exc).__name__}: {describe(exc)}; rerun with "
                    f"{DEBUG_FLAG} (or {DEBUG_ENV}=1) for the traceback and report it")
        return EXIT_FAILED
    finally:
        processes.stop_children(which=[c for c in processes.tracked() if c not in before])
        restore()


__all__ = ["BAD_INPUT", "DEBUG_ENV", "DEBUG_FLAG", "CliError", "debug_enabled", "describe",
           "print_error", "run_main"]
