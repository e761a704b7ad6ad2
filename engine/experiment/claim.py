"""The experiment's claim on its workdir: one experiment (one run in one store) per folder.

A cell's job clears the cell's student folder before training it and writes its predictions by the
cell's slug, so two experiments sharing a workdir (another name in the same grid file, or the same
grid run against another store) would silently replace each other's students and predictions while
the first store's runs still point at them. The first experiment to run in a workdir writes a small
marker naming its store and run; any other experiment finding it is refused before anything runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ...store.eventstore import EventStore
from ..errors import ConfigError
from .config import Experiment

CLAIM_FILE = ".synthledger-experiment.json"


@dataclass(frozen=True)
class Claim:
    store: str  # the store's `where`: a SQLite file's path, or a URL without its password
    experiment: str  # the experiment's name
    run_id: str  # its run in that store


def claim_path(exp: Experiment) -> Path:
    return exp.workdir / CLAIM_FILE


def read_claim(exp: Experiment) -> Claim | None:
    """The workdir's claim; None when there is none (a new folder, or one from before claims). An
    unreadable marker is not taken as nobody's: it is refused like any other experiment's."""
    path = claim_path(exp)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Claim(str(data["store"]), str(data["experiment"]), str(data["run_id"]))
    except (OSError, ValueError, KeyError, TypeError):
        return Claim("(unreadable)", "(unreadable)", f"see {path}")


def _stale(claim: Claim, store: EventStore) -> bool:
    """A claim from this store whose run is no longer in it (the store was deleted and made anew):
    no run of any store points into the folder any more, so it is free."""
    if claim.store != store.where:
        return False
    return not any(info.id == claim.run_id for info in store.list_runs(kind="experiment"))


def store_where(url: str) -> str:
    """What `EventStore(url).where` will be, without opening (or creating) the store."""
    from ...store.urls import display, sqlite_file

    path = sqlite_file(url)
    return str(Path(path)) if path else display(url)


def check_store(exp: Experiment, url: str) -> None:
    """Refuse, before the store is even opened (a mistaken --store is not left behind as a new,
    empty store file), a workdir another store's experiment claimed."""
    claim = read_claim(exp)
    where = store_where(url)
    if claim is not None and claim.store != where:
        raise _refusal(exp, claim, where)


def check_claim(exp: Experiment, store: EventStore, run_id: str | None) -> None:
    """Refuse (one line) an experiment whose workdir another experiment claimed: `run_id` is this
    experiment's run in `store`, None when it is about to be created."""
    claim = read_claim(exp)
    if claim is None or (claim.store == store.where and claim.run_id == run_id) or _stale(claim, store):
        return
    raise _refusal(exp, claim, store.where)


def _refusal(exp: Experiment, claim: Claim, where: str) -> ConfigError:
    this = f"experiment {exp.name!r}" + ("" if where == claim.store else f" in store {where}")
    return ConfigError(
        f"{exp.path}: experiment.workdir {exp.workdir} belongs to experiment {claim.experiment!r} ({claim.run_id}) "
        f"in store {claim.store}; {this} would overwrite its students and predictions: set experiment.workdir "
        "to a folder of its own, or use {name} in it")


def stake_claim(exp: Experiment, store: EventStore, run_id: str) -> None:
    """Mark the workdir as this experiment's (once; atomically, so a kill leaves it whole or absent)."""
    if read_claim(exp) == Claim(store.where, exp.name, run_id):
        return
    path = claim_path(exp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"store": store.where, "experiment": exp.name, "run_id": run_id}, indent=2) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)
