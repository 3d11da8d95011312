"""What every ``ktgraph`` command shares: exit codes, SIGTERM as an exception, files and overrides apart."""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

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


def is_file(word: str) -> bool:
    try:
        return Path(word).exists()
    except OSError:  # a name too long to be a file, say
        return False


def split_targets(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional words with ``=`` are overrides; the others are files."""
    overrides = [i for i in items if "=" in i and not is_file(i)]
    return [i for i in items if i not in overrides], overrides
