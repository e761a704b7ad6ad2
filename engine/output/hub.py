"""The Hugging Face Hub, for exports (`export --push-to-hub REPO`) and seeds (a hub dataset id).

Both need the network; under `HF_HUB_OFFLINE=1` (or with no connection) they fail with one line
that says so rather than a client traceback. The hub client (`huggingface_hub`, which `datasets`
brings) is imported only here, only when used. Where the hub is comes from `HF_ENDPOINT`, the
token from `HF_TOKEN` or a cached `hf auth login`: neither is ever written to the store.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import HubError

__all__ = ["HubError", "hub_offline", "push_dataset"]


def hub_offline() -> bool:
    """True when the user asked for no hub traffic (`HF_HUB_OFFLINE`), as the hub client reads it."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def push_dataset(dataset: Any, repo: str, card: str, *, private: bool = False, message: str = "") -> str:
    """Upload `dataset` (a `datasets.Dataset`) as parquet under `data/` with `card` as README.md to
    the dataset repo `repo` (created if missing); returns the repo's URL."""
    if hub_offline():
        raise HubError(f"offline: cannot push to the Hugging Face Hub repo {repo!r} (HF_HUB_OFFLINE is set; "
                       "unset it to push, the local export is written either way)")
    try:
        from huggingface_hub import HfApi
    except ImportError as exc:  # pragma: no cover - datasets brings it
        raise HubError("--push-to-hub needs huggingface_hub (pip install 'synthledger[train]')") from exc
    import datasets

    with tempfile.TemporaryDirectory(prefix="synthledger-push-") as tmp:
        folder = Path(tmp)
        (folder / "data").mkdir()
        datasets.disable_progress_bars()  # one line of output per command, not a bar per file
        dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
        (folder / "README.md").write_text(card, encoding="utf-8")
        api = HfApi()
        try:
            url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=str(folder),
                              commit_message=message or "synthledger export")
        except Exception as exc:  # network, auth, a refused name: the user needs the repo and the cause
            raise HubError(f"push to the Hugging Face Hub repo {repo!r} failed: {_one_line(exc)}") from None
    return str(url)
