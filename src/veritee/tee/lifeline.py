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
the same home created in its place (a socket, a pid file): it removes only the inode it made,
and holds that inode open meanwhile so its number is not reused.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Owned:
    """A file this process created: its identity, and a descriptor that pins it.

    The descriptor (``O_PATH``: it works on sockets too) keeps the inode allocated while this
    process lives, even once another process unlinked the path: so no file created later can
    reuse the inode number and pass for this one (file systems such as tmpfs reuse them at
    once).
    """

    dev: int
    ino: int
    fd: int


def own_file(path: Path) -> Owned | None:
    """The file this process just created at ``path``, to remove it later (:func:`remove_own`)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    except OSError:
        return None
    st = os.fstat(fd)
    return Owned(st.st_dev, st.st_ino, fd)


def remove_own(path: Path, owned: Owned | None) -> None:
    """Remove ``path`` only if it is still the file this process created (``own_file``)."""
    if owned is None:
        return
    try:
        st = path.lstat()
        if (st.st_dev, st.st_ino) == (owned.dev, owned.ino):
            path.unlink(missing_ok=True)
        else:
            log.info("%s now belongs to another process: left in place", path)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(owned.fd)


__all__ = ["EXIT_ORPHANED", "Lifeline", "Owned", "own_file", "remove_own", "watch"]
