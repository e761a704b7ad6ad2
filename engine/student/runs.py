"""Training and evaluation as recorded runs of their own (kind "train" / "eval"), linked to the
generation run they came from, so an experiment can be audited from data to score."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, PrivateAttr

from ... import __version__
from ...store.eventstore import EventStore, new_run_id, owner_token
from ...store.folders import unwritable_folder
from ...store.records import owned_here, owner_alive
from ...store.hashing import canonical
from .. import host
from ..run.config import ConfigError, NamedSection, _Strict, apply_overrides, validate_plugin_options
from ..run.configfile import read_toml, validate_config
from ..output.dataset import accepted_rows, run_seeds
from ..ledger.events import RunStarted, SampleProposed
from ..ledger.journal import Journal
from .ctrl_c import Record, guarded_ctrl_c


class DataSection(_Strict):
    include_seeds: bool = False


class OutputSection(_Strict):
    # {run}: the source run's name; {train_run}: this training run's id. A folder that holds
    # another run's student already gets `-<train run id>` appended (see student_dir).
    dir: str = ".synthledger/students/{run}"


class EvalSection(_Strict):
    """Optional: evaluate the trained adapter right after training."""

    evaluator: str = "accuracy"
    heldout: str = "reasoning-gym:gsm_symbolic:1234"
    limit: int | None = Field(default=None, ge=1)
    task: str | None = None
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=256, ge=1)


class TrainerSection(NamedSection):
    name: str = "lora_sft"


class TrainConfig(_Strict):
    trainer: TrainerSection = TrainerSection()
    data: DataSection = DataSection()
    output: OutputSection = OutputSection()
    eval: EvalSection | None = None
    # The file it was read from, for errors that name a key of it (not part of what is recorded).
    _source: str = PrivateAttr(default="train config")


def load_train_config(path: Path | None, overrides: list[str] | None = None) -> TrainConfig:
    data = apply_overrides(read_toml(path, "train config") if path is not None else {}, overrides or [])
    cfg = validate_config(TrainConfig, data, str(path or "train config"))
    if path is not None:
        cfg._source = str(path)
    return cfg


def open_log(store: EventStore, name: str, kind: str, config: dict[str, Any], parent_id: str | None = None,
             run_id: str | None = None) -> Journal:
    """A training or evaluation run, written event by event (durable at each) by the one journal;
    its row and `run_started` commit together, so a kill cannot leave a run without its start."""
    started = {"config": config, "config_hash": "", "plan_hash": "", "version": __version__, "kind": kind,
               "budget": {}}
    return Journal.start(store, name, config, hashlib.sha256(canonical(config)).hexdigest()[:16],
                         [(RunStarted.TYPE, started)], kind=kind, owner=owner_token(), parent_id=parent_id,
                         run_id=run_id, durable_each=True)


ORPHAN_MESSAGE = ("its process ended before the run did (killed, or the machine stopped); "
                  "training and evaluation runs are not resumed: train or evaluate again to replace it")


INTERRUPTED_MESSAGE = ("stopped by Ctrl-C (SIGINT); training and evaluation runs are not resumed: "
                       "train or evaluate again to replace it")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training or evaluation, raised once its run is closed as `interrupted` (not
    `failed`: nothing went wrong). Still a KeyboardInterrupt, so whatever drives the run (the
    command, an experiment's worker) stops as it would have; it carries the run for the one line."""

    def __init__(self, kind: str, run_id: str) -> None:
        super().__init__(f"{kind} run {run_id} interrupted")
        self.kind, self.run_id = kind, run_id

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt whole when it crosses to an experiment's driver
        return (Interrupted, (self.kind, self.run_id))


def close_orphans(store: EventStore, *, wait_s: float = 0.0, since: float = 0.0) -> list[str]:
    """Close every training or evaluation run whose process on this host is gone, as `interrupted`.

    Unlike a generation run, neither kind is ever resumed: one killed with its experiment would read
    `running` forever, beside the run its cell was redone as. Runs held by another host are left
    alone (whether their process lives cannot be seen from here, and a long step may be silent).
    With `wait_s`, sweeps again (for at most that long) while a live process of this host still holds
    such a run created `since`: a worker just killed outlives its task's end by a moment."""
    deadline = time.monotonic() + wait_s
    closed: list[str] = []
    while _sweep(store, since, closed) and time.monotonic() < deadline:
        time.sleep(0.2)
    return closed


def _sweep(store: EventStore, since: float, closed: list[str]) -> int:
    """One pass of `close_orphans`, adding what it closed to `closed`; how many running training or
    evaluation runs created `since` a live process of this host still holds."""
    held = 0
    for info in store.list_runs():
        if info.kind not in ("train", "eval") or info.status != "running" or not info.owner:
            continue
        if owner_alive(info.owner):
            if info.created >= since and owned_here(info.owner):
                held += 1
            continue
        me = owner_token()
        # Only from the dead holder seen above: an experiment's driver and each of its training and
        # evaluation jobs sweep at once, and a take-over from whoever holds it now (the lease's
        # `acquire` with no patience) let a second sweep take a run from the first mid-close, which
        # then failed its cell ("held by another process (nobody)").
        if not store.take_from(info.id, me, info.owner):
            continue
        now = store.get_run(info.id)
        Journal(store, info.id, now.last_seq, now.head_hash, me, durable_each=True).finish("interrupted", ORPHAN_MESSAGE)
        closed.append(info.id)
    return held


def _rows_from(source: str, store: EventStore, include_seeds: bool) -> tuple[list[dict[str, Any]], str | None, str]:
    """Chat rows from a run (id or name) or from an exported .jsonl file."""
    from ..output.export import chat_record
    from ..output.jsonl import JsonlError, read_jsonl

    path = Path(source)
    if path.suffix in (".jsonl", ".json") and path.exists():
        try:
            rows = [_file_row(path, number, row) for number, row in read_jsonl(path)]
        except JsonlError as exc:
            raise ConfigError(str(exc)) from None
        return rows, None, path.stem
    info = store.resolve(source)
    # In a stable order (by sample id), not the order answers happened to settle in: the same data
    # then trains the same student, whichever process or run paid for it.
    rows = sorted(accepted_rows(store, info.id, include_seeds=include_seeds), key=lambda r: r["sample_id"])
    return [chat_record(r) for r in rows], info.id, info.name


def _file_row(path: Path, number: int, row: dict[str, Any]) -> dict[str, Any]:
    """One line of a dataset file as a chat row: `messages` as they are (chat, openai exports), or a
    `question` and `answer` pair (a jsonl export); anything else is named by its file and line here,
    before a run is recorded, rather than failing later on a missing key."""
    from ..output.chat_rows import messages_problem
    from ..output.export import chat_record

    if "messages" in row:
        problem = messages_problem(row)
        if problem is not None:
            raise ConfigError(f"{path}, line {number}: {problem}")
        return row
    if isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
        return chat_record(row)
    missing = " and ".join(repr(k) for k in ("question", "answer") if not isinstance(row.get(k), str))
    raise ConfigError(f"{path}, line {number}: has no 'messages' and no {missing} string; a training row is "
                      "a chat row (as `export --format chat` writes) or a question and answer "
                      "(as `export --format jsonl` writes)")


def _recorded(kind: str, open_run: Callable[[], Journal], work: Callable[[Record], Any],
              closing: Callable[[Journal, Any], str]) -> tuple[Journal, Any]:
    """A trainer's or evaluator's whole job as a run: `open_run()`, then `work(on_event)` with its
    events going to the run, then `closing(log, result)` (what must exist before the run reads
    completed; it returns the closing message). Ctrl-C is guarded throughout (see ctrl_c), and
    opening and closing are held: once the run exists, it ends `completed`, `interrupted` or
    `failed`, never left `running` by a Ctrl-C that came while it was being opened."""
    with guarded_ctrl_c() as ctrl_c:
        with ctrl_c.held():
            log = open_run()
        try:
            ctrl_c.check()
            result = work(ctrl_c.guarding(log.record))
            ctrl_c.check()
            message = closing(log, result)
        except KeyboardInterrupt:
            with ctrl_c.held():
                log.finish("interrupted", INTERRUPTED_MESSAGE)
            raise Interrupted(kind, log.run_id) from None
        except BaseException as exc:
            with ctrl_c.held():
                log.finish("failed", f"{type(exc).__name__}: {exc}")
            raise
        with ctrl_c.held():
            log.finish("completed", message)
        ctrl_c.check()  # (pressed while it closed: the run is complete, and the caller still stops)
    return log, result


def train_run(source: str, cfg: TrainConfig, store: EventStore, *, progress: bool = True) -> dict[str, Any]:
    trainer_cls = host.get("trainers", cfg.trainer.name)
    options = validate_plugin_options(trainer_cls.Options, cfg.trainer.extras(), "trainer")
    rows, parent, label = _rows_from(source, store, cfg.data.include_seeds)
    if not rows:
        if parent is None:  # a file, not a run: run advice would send the user looking in the store
            raise ConfigError(f"dataset file {source} has no rows to train on")
        raise ConfigError(f"{source}: no accepted samples to train on (export it or check `show {source}`)")
    student = getattr(options, "student", None)
    if student is not None:
        _check_model(student, f"{cfg._source}: trainer.student")
    close_orphans(store)
    run_id = new_run_id()
    out_dir = student_dir(cfg.output.dir, label, run_id)
    why = unwritable_folder(out_dir)
    if why is not None:
        raise ConfigError(f"[output] dir {out_dir}: {why}")
    trainer = trainer_cls(options)

    def closing(log: Journal, finished: Any) -> str:
        (out_dir / "provenance.json").write_text(json.dumps(
            {"train_run_id": log.run_id, "source_run_id": parent, "store": store.where}, indent=2))
        return f"adapter in {out_dir}"

    log, finished = _recorded(
        "train",
        lambda: open_log(store, f"train-{label}", "train",
                         {"train": cfg.model_dump(mode="json"), "source": source, "out_dir": str(out_dir)},
                         parent_id=parent, run_id=run_id),
        lambda on_event: trainer.train(rows, out_dir, on_event=on_event, progress=progress), closing)
    return {"run_id": log.run_id, "out_dir": str(out_dir), **finished}


def student_dir(template: str, label: str, train_run: str) -> Path:
    """Where a training run writes its student (absolute). A folder that already holds another
    run's student is never written over: this run's id is appended instead."""
    out = Path(template.format(run=label, train_run=train_run)).expanduser().resolve()
    if (out / "provenance.json").exists() or (out / "adapter").exists():
        out = out.with_name(f"{out.name}-{train_run}")
    return out


def check_eval(e: EvalSection, trained_on: set[str] | None = None) -> None:
    """A train config's [eval], checked before training: an unknown task or evaluator, a held-out
    set that does not load, or one that shares a question with the data (`trained_on`) would
    otherwise fail only once the student is trained, which can be hours in."""
    ev_cls = host.get("evaluators", e.evaluator)
    host.get("tasks", e.task or "gsm8k")
    opts = validate_plugin_options(ev_cls.Options, {"heldout": e.heldout, "limit": e.limit, "batch_size": e.batch_size,
                                                    "max_new_tokens": e.max_new_tokens}, "eval")
    ev_cls(opts).heldout(trained_on)


def _check_model(name: str, where: str | None = None) -> None:
    """Fail on an unknown model, or a folder whose config or tokenizer does not load, before a run
    is recorded (needs the `train` extra), in one line that starts with `where` (the file and key
    that named it, when a config did)."""
    from ...plugins.hf_models import UnknownModel, check_loadable

    try:
        check_loadable(name)
    except UnknownModel as exc:
        if where is None:
            raise
        raise UnknownModel(f"{where}: {exc}") from None


def training_questions(store: EventStore, run_id: str) -> set[str]:
    """Every question a generation run trained on (its seeds and its generated questions)."""
    questions = {ev.payload["question"] for ev in store.iter_events(run_id, types=[SampleProposed.TYPE])}
    started = next(iter(store.iter_events(run_id, types=[RunStarted.TYPE])), None)
    try:
        seeds = run_seeds(started.payload) if started is not None else []
    except Exception:  # an old run whose seeds can no longer be loaded: its generated questions still count
        seeds = []
    return questions | {s["question"] for s in seeds}


EVALS_DIR = Path(".synthledger/evals")  # each evaluation writes under its own run id here


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "x"


def eval_name(model: str, heldout: str, run_id: str) -> str:
    """`eval-<student>-<held-out set>-<run id>`: unique, and says what was scored on what. The
    student of a `train` output folder (`.../NAME/adapter`) is NAME, not "adapter"."""
    path = Path(model)
    student = path.parent.name if path.name == "adapter" and path.parent.name else path.name
    held = Path(heldout).stem if heldout.endswith(".jsonl") else heldout.removeprefix("reasoning-gym:")
    return f"eval-{_label(student)}-{_label(held)}-{run_id}"


def eval_run(model: str, heldout: str, store: EventStore, *, limit: int | None = None, task_name: str = "gsm8k",
             evaluator: str = "accuracy", exclude_run: str | None = None, out_path: Path | None = None,
             options: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    if (Path(model) / "adapter" / "adapter_config.json").is_file():  # a `train` output folder
        model = str(Path(model) / "adapter")
    _check_model(model)
    if Path(model).exists():  # recorded absolute: `show` of the eval run names it wherever it is read
        model = str(Path(model).resolve())
    ev_cls = host.get("evaluators", evaluator)
    opts = validate_plugin_options(ev_cls.Options, {"heldout": heldout, "limit": limit, **(options or {})}, "eval")
    task = host.get("tasks", task_name)()
    parent = None
    prov = Path(model).parent / "provenance.json"
    if not prov.exists():
        prov = Path(model) / "provenance.json"
    if exclude_run is None and prov.exists():
        meta = json.loads(prov.read_text())
        exclude_run, parent = meta.get("source_run_id"), meta.get("train_run_id")
    exclude: set[str] | None = None
    if exclude_run:
        exclude = training_questions(store, store.resolve(exclude_run).id)
    evaluator_obj = ev_cls(opts)
    examples = evaluator_obj.heldout(exclude)
    close_orphans(store)
    run_id = new_run_id()
    out = (Path(out_path) if out_path is not None else EVALS_DIR / run_id / "predictions.jsonl").resolve()
    why = f"{out} is a folder, not a file" if out.is_dir() else unwritable_folder(out.parent)
    if why is not None:
        raise ConfigError(f"predictions {out}: {why}")
    log, result = _recorded(
        "eval",
        lambda: open_log(store, eval_name(model, heldout, run_id), "eval",
                         {"model": model, "heldout": heldout, "limit": limit, "task": task_name,
                          "options": opts.model_dump(mode="json"), "excluded_from_run": exclude_run,
                          "predictions": str(out)}, parent_id=parent, run_id=run_id),
        lambda on_event: evaluator_obj.evaluate(model, examples, task, out, on_event=on_event, progress=progress),
        lambda log, result: f"accuracy {result.get('accuracy')}")
    return {"run_id": log.run_id, **result}
