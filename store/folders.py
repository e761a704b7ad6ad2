"""Making the folder a file goes in, with the reason in words when the OS refuses: a store and an
export both name the path the user gave, never an internal temporary one."""

from __future__ import annotations

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
