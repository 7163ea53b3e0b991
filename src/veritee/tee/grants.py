"""Directories a client grants a module: never a way into the secure world's own state.

The secure world opens a granted host directory on the client's behalf, so without a check
it is a confused deputy: ``veritee run --dir HOME/device::/d cat.wasm -- /d/huk.bin`` would
print the device's hardware-unique key. A grant is therefore judged by its *real* path
(symlinks and ``..`` resolved) against the secure world's own places in the home
(``veritee.home``): the device's secrets, the manufacturer's side, every vTEE's directory
(sockets, module storage, AOT cache, scratch) and the monitor's files. A grant inside one of
them, equal to one, or containing one (a parent of the home, ``/``) is refused.

The check runs twice: at LOAD on the path the client named, and in the worker right before
the run, on the directory it actually opened (``opened``): the normal world owns the disk
and may swap a checked directory for a symlink between the two (the emulation's limit: on
real hardware the secure world's storage is out of the normal world's reach altogether).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from veritee.errors import UsageError
from veritee.home import Home

# A load config naming thousands of directories is an attempt to make each run slow.
MAX_GRANTS = 32
# A guest path is a name in the module's file system, not a place to smuggle data.
MAX_GUEST_PATH = 256


class GrantRefused(UsageError):
    """A granted directory would reach the secure world's own state; the message says which."""


class GrantMoved(UsageError):
    """A granted directory is no longer the one checked at load (replaced, or a symlink now)."""


def protected_paths(vtee_dir: Path) -> tuple[Path, ...]:
    """The secure world's own places, real paths, for the vTEE whose directory is ``vtee_dir``.

    ``vtee_dir`` is ``HOME/vtees/NAME`` (``Home.vtee``); if it is laid out otherwise, the
    vTEE's directory and its parent are protected whole.
    """
    vtee_dir = Path(os.path.realpath(vtee_dir))
    places = [vtee_dir, vtee_dir.parent]
    if vtee_dir.parent.name == Home(Path("/")).vtees.name:
        home = Home(vtee_dir.parent.parent)
        places += [
            home.device,
            home.manufacturer,
            home.vtees,
            home.monitor_socket,
            home.monitor_pid,
            home.log_file,
        ]
    return tuple(dict.fromkeys(Path(os.path.realpath(p)) for p in places))


def check_grant(host: str, protected: Iterable[Path]) -> str:
    """The real path of granted directory ``host``; raise GrantRefused or UsageError."""
    if not isinstance(host, str) or not os.path.isabs(host):
        raise UsageError(f"granted dir {str(host)[:200]!r} is not an absolute path")
    try:
        real = os.path.realpath(host, strict=True)
    except (OSError, ValueError):
        raise UsageError(f"granted dir {host[:200]!r} does not exist") from None
    if not os.path.isdir(real):
        raise UsageError(f"granted dir {host[:200]!r} is not a directory")
    refuse(Path(real), protected, named=host)
    return real


def refuse(real: Path, protected: Iterable[Path], *, named: str) -> None:
    """Raise GrantRefused if ``real`` is inside, equal to, or contains a protected place."""
    shown = named[:200] if named == str(real) else f"{named[:200]} (really {real})"
    places = tuple(protected)
    for place in places:
        if real == place or real.is_relative_to(place):
            raise GrantRefused(
                f"granted dir {shown} is inside the secure world's own state ({place}): "
                "a module may not be granted the device's secrets, vTEEs or module storage"
            )
    for place in places:
        if place.is_relative_to(real):
            raise GrantRefused(
                f"granted dir {shown} contains the secure world's own state ({place}): "
                "grant a directory that holds only the module's data"
            )


def check_guest(guest: object, reserved: str) -> str:
    """A guest path: absolute, normalised, no ``..``, not ``reserved``; raise UsageError."""
    if not isinstance(guest, str) or not guest.startswith("/") or len(guest) > MAX_GUEST_PATH:
        raise UsageError(f"guest path {str(guest)[:80]!r} must be absolute, under 256 bytes")
    parts = guest.split("/")
    if ".." in parts or "\0" in guest or os.path.normpath(guest) != guest:
        raise UsageError(f"guest path {guest[:80]!r} must be normalised, with no '..'")
    if guest == "/" or guest == reserved or guest.startswith(reserved + "/"):
        raise UsageError(f"guest path {guest[:80]!r} is reserved")
    return guest


def open_checked(host: str, protected: Iterable[Path]) -> tuple[int, str]:
    """Open granted dir ``host`` (checked at load) and check what was opened.

    Returns the open descriptor and a path naming exactly that directory (``/proc/self/fd``),
    so what the module reaches is what was checked, whatever the normal world renames
    meanwhile. Raise GrantMoved or GrantRefused.
    """
    try:
        fd = os.open(host, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise GrantMoved(f"granted dir {host[:200]} is gone or replaced since load") from None
    try:
        fd_path = f"/proc/self/fd/{fd}"
        real = os.readlink(fd_path)
        if real != host:
            raise GrantMoved(f"granted dir {host[:200]} now resolves elsewhere ({real[:200]})")
        refuse(Path(real), protected, named=host)
    except BaseException:
        os.close(fd)
        raise
    return fd, fd_path


def private_dir(storage: Path, name: str) -> Path:
    """A module's private directory ``name`` in the vTEE's storage (made if missing), real
    path.

    The normal world owns the disk: a symlink put there in advance would make the module's
    own storage a window onto whatever it names. Raise GrantMoved if it is not a directory
    of the storage itself.
    """
    private = storage / name
    private.mkdir(parents=True, exist_ok=True)
    expected = os.path.join(os.path.realpath(storage), private.name)
    if os.path.islink(private) or os.path.realpath(private) != expected:
        raise GrantMoved(f"module storage {private} is not a directory of the vTEE's storage")
    return Path(expected)
