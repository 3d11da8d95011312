"""What every ``ktgraph`` command shares: exit codes, SIGTERM as an exception, warnings as messages."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(BaseException):
    """SIGTERM, raised where the program is (as Ctrl-C raises KeyboardInterrupt), so cleanups run."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the command runs; the previous handler is restored."""
    owner = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a DataLoader worker forked from this process: end quietly
            os._exit(EXIT_TERMINATED)
        raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except (ValueError, AttributeError):  # not the main thread, or no SIGTERM on this platform
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


PACKAGE = Path(__file__).resolve().parent.parent


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """``warnings.showwarning`` for the command line: ktgraph's own warnings are messages to a user, so
    they print as ``warning: ...``, without the file and source line inside ktgraph that raised them."""
    ours = Path(filename).resolve().is_relative_to(PACKAGE)
    text = f"warning: {message}\n" if ours else warnings.formatwarning(message, category, filename, lineno, line)
    (file or sys.stderr).write(text)
