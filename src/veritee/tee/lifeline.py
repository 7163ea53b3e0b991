"""Secure-world processes that end with their parent, and files that only their owner removes.

A vTEE holds its attestation key and sealing root; a module worker holds a module's sealing
key. Neither may outlive the process that started it: a monitor killed with SIGKILL runs no
cleanup, and a vTEE left behind would go on serving, holding keys, with no command able to
stop it (``tee stop`` talks to the monitor). So every child gets the read end of a pipe whose
only write end its parent holds (never inherited by anyone else): the kernel closes that end
when the parent dies, however it dies, and the child, seeing EOF, exits at once.
``PR_SET_PDEATHSIG`` is not used: its signal follows the *thread* that forked, and the
monitor starts vTEEs (and a vTEE its workers) from request and refill threads that end long
before the parent does.

:func:`own_file` / :func:`remove_own` keep a process from removing a file another process of
the same home created in its place (a socket, a pid file): it removes only the inode it made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("veritee.lifeline")

EXIT_ORPHANED = 70  # exit status of a secure-world process whose parent died


class Lifeline:
    """The parent's end: one pipe for all its children; dies (closes) with the parent."""

    def __init__(self) -> None:
        # os.pipe descriptors are not inheritable: the write end stays in this process only.
        self._read, self._write = os.pipe()

    @property
    def child_fd(self) -> int:
        """The descriptor to pass to a child (``pass_fds``) and name on its command line."""
        return self._read


def watch(fd: int) -> None:
    """Child side: exit the moment the parent's end of the lifeline closes.

    Called first thing in a child's ``main``; raises nothing, returns at once (a daemon thread
    waits on the pipe). If the parent died before this runs, the read returns EOF at once.
    """

    def wait() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 1):
                pass
        # No cleanup: the parent that would be told is gone, and this process's files are
        # its own to leave (the next owner of the home replaces them under its lock).
        log.error("parent process ended: exiting")
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=wait, name="lifeline", daemon=True).start()


def own_file(path: Path) -> tuple[int, int] | None:
    """The identity (device, inode) of a file this process just created, to remove it later."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def remove_own(path: Path, identity: tuple[int, int] | None) -> None:
    """Remove ``path`` only if it is still the file this process created (``own_file``)."""
    if identity is None:
        return
    try:
        st = path.stat()
    except OSError:
        return
    if (st.st_dev, st.st_ino) == identity:
        path.unlink(missing_ok=True)
    else:
        log.info("%s now belongs to another process: left in place", path)


__all__ = ["EXIT_ORPHANED", "Lifeline", "own_file", "remove_own", "watch"]
