"""Where a module's source is: a file, or a directory found by the module's name.

Authentic Execution (reactive-tools) finds a module's sources by its name beside the
descriptor (a native module's crate in ``folder``, default its name; a TrustZone module's in
``files_dir/<name>/``). Veritee does the same: a directory holding ``<name>.c`` or
``<name>.wat``, else its one C or WAT file, else a cargo project (``Cargo.toml``), which the
build takes as it is.
"""

from __future__ import annotations

from pathlib import Path

from veritee.app.errors import SourceNotFound

_IN_A_DIRECTORY = (".c", ".wat")  # found in a directory without being named
# A directory of thousands of files is not a module's source; listing it stays cheap.
MAX_LISTED = 4096


def find(path: Path, module: str, *, where: str = "", field: str = "") -> Path:
    """The file (or cargo directory) to build for ``module``; raise SourceNotFound."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise SourceNotFound(f"source {path} does not exist", where=where, field=field)
    for suffix in _IN_A_DIRECTORY:
        named = path / f"{module}{suffix}"
        if named.is_file():
            return named
    found: list[Path] = []
    try:
        for i, each in enumerate(path.iterdir()):
            if i >= MAX_LISTED:
                break
            if each.suffix in _IN_A_DIRECTORY and each.is_file():
                found.append(each)
    except OSError as exc:
        raise SourceNotFound(
            f"cannot list {path}: {exc.strerror}", where=where, field=field
        ) from None
    if len(found) == 1:
        return found[0]
    if (path / "Cargo.toml").is_file():
        return path
    if found:
        names = ", ".join(sorted(p.name for p in found))
        raise SourceNotFound(
            f"{path} holds several sources ({names}) and no {module}.c or {module}.wat: "
            "name the one to build",
            where=where,
            field=field,
        )
    raise SourceNotFound(
        f"{path} holds no {module}.c, {module}.wat, C or WAT file, or Cargo.toml",
        where=where,
        field=field,
    )
