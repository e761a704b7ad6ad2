"""Making the folder a file goes in, with the reason in words when the OS refuses: a store and an
export both name the path the user gave, never an internal temporary one."""

from __future__ import annotations

import os
from pathlib import Path


def make_parent(path: Path) -> str | None:
    """Create `path`'s folder (and its parents); None when it is there, else why it cannot be: a file
    where a folder must be, or the folder the OS refused and its reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return None
    except OSError as exc:
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
        return f"cannot create the folder {exc.filename or path.parent}: {exc.strerror or exc}"


def unwritable_folder(folder: Path) -> str | None:
    """Why files could not be made in `folder` (and the folders above it that are missing), found
    without creating anything: a file where a folder must be, or the nearest folder that exists and
    the OS will not let us write in (a read-only mount). None when they could.

    For outputs written at the end of a long job (a trained student, an evaluation's predictions):
    checked before the job starts, the job is not spent for nothing and no half-made folder is left."""
    for path in (folder, *folder.parents):
        if not path.exists():
            continue
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        if not os.access(path, os.W_OK):
            return f"cannot write in the folder {path}"
        return None
    return None
