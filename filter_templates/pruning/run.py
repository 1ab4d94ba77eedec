"""A pruning baseline as one run (:mod:`.adapter`): train, prune to the budget, fine-tune.

A run whose config has ``prune`` set is made of ordinary training stages, each a complete run of
:func:`training.loop.train` in its own folder under ``RUN/stages/`` (so each resumes bit for bit as any
run does), plus the pruning between them:

* ``prune-l1`` / ``prune-l1-global``: ``stages/train`` trains the base model (the config's arch,
  its width ``--prune-from``) for ``at`` of the epochs; it is pruned to the budget
  (``RUN/pruned.pt``: the structure and the pruned weights; ``RUN/pruned.json``: the same record
  without the weights, readable); ``stages/finetune`` trains the pruned model for the remaining
  epochs with the recipe's schedule started again.
* ``prune-scratch``: the structure ``prune-l1-global`` found for the same base, budget, data,
  recipe and seed -- read from that run's folder beside this one when it has pruned already, else
  found here the same way -- re-initialised and trained in ``stages/scratch`` for all the epochs.

The run folder itself looks like any run's to the rest of the package: ``config.json`` (the
pruning config), ``metrics.jsonl`` (every stage's epochs, numbered on, each row naming its
stage), ``checkpoint.pt`` (a small record of where the run is, so a sweep resumes it; the
weights live in the stage folders), ``model.pt``, ``outcomes.npz`` (the last stage's per-image
outcomes) and ``summary.json`` (the final stage's
accuracies; resources measured on the pruned model; ``pruned``: ratio, per-layer counts and
structure). Everything is read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from filter_templates.core import rundir
from filter_templates.core.device import resolve_device
from filter_templates.core.errors import UsageError
from filter_templates.core.status import DONE, PAUSED
from filter_templates.pruning import adapter
from filter_templates.training.config import EXECUTION_KEYS, PRUNE_GLOBAL, PRUNE_SCRATCH, Summary, TrainConfig
from filter_templates.training.loop import Context, Start, summarise, train

__all__ = ["train_pruned", "load_pruned_model", "run_structure", "STAGES", "PRUNED", "PRUNED_JSON"]

STAGES = "stages"
PRUNED = "pruned.pt"
PRUNED_JSON = "pruned.json"


def _spec(config: TrainConfig) -> dict[str, Any]:
    """The config's pruning setting (a config without one is no pruning run)."""
    if config.prune is None:
        raise UsageError("not a pruning baseline: the training config's 'prune' is null")
    return config.prune


def _epochs(config: TrainConfig) -> tuple[int, int]:
    """(epochs before pruning, after): at least one each."""
    first = min(max(1, round(_spec(config)["at"] * config.epochs)), config.epochs - 1)
    return first, config.epochs - first


def _stage_config(
    config: TrainConfig, epochs: int, choice: Mapping[str, Any] | None = None, stop_at: int | None = None
) -> TrainConfig:
    """An ordinary training config of the base model for one stage (``choice``: the precision and
    memory format an earlier stage used, kept so the stages run alike; ``stop_at``: the stage's own
    epoch to pause after, None: its end)."""
    kw = {k: choice[k] for k in ("precision", "memory_format")} if choice else {}
    stop = stop_at if stop_at is not None and stop_at < epochs else None
    return dataclasses.replace(config, epochs=epochs, prune=None, stop_at=stop, **kw)


def _stage_stop(config: TrainConfig, offset: int) -> int | None:
    """The run's ``stop_at`` as the epoch of a stage that starts after ``offset`` of the run's
    planned epochs (a stage wholly after it is never started: the run pauses before)."""
    return None if config.stop_at is None else config.stop_at - offset


def search_key(config: TrainConfig) -> str:
    """What ``prune-l1-global`` and ``prune-scratch`` share: the base model, budget, data, recipe
    and seed (every result field but the method). The global run records it with its structure."""
    d = {k: v for k, v in config.to_dict().items() if k not in EXECUTION_KEYS}
    d["prune"] = {**_spec(config), "method": None}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def _sibling(config: TrainConfig, out: Path) -> Path | None:
    """The ``pruned.pt`` of the ``prune-l1-global`` run beside ``out`` with the same search, if
    any: ``prune-scratch`` takes its architecture, ``prune-l1`` its trained base model (the same
    training of the same base with the same seed, so it is not repeated)."""
    key = search_key(config)
    for record in sorted(out.parent.glob(f"*/{PRUNED_JSON}")):
        doc = rundir.read_json(record) or {}
        if doc.get("search_key") == key and doc.get("method") == PRUNE_GLOBAL and (record.parent / PRUNED).is_file():
            return record.parent / PRUNED
    return None


class _Relay:
    """Turns each stage's epoch rows into the run's: numbered on, stage-tagged, written to the
    run's metrics and its small checkpoint, and passed to the caller's ``on_epoch``."""

    def __init__(self, config: dict, out: Path, on_epoch: Callable[[dict], None] | None) -> None:
        self.config, self.out, self.on_epoch = config, out, on_epoch
        self.done: list[dict] = []  # rows of finished stages
        self.stage, self.folder, self.offset = "", out, 0

    def begin(self, stage: str, folder: Path | None = None) -> Path:
        self.stage, self.folder, self.offset = stage, folder or self.out / STAGES / stage, len(self.done)
        return self.folder

    def rows(self) -> list[dict]:
        now = [
            {**r, "epoch": self.offset + int(r["epoch"]), "stage": self.stage} for r in rundir.read_metrics(self.folder)
        ]
        return self.done + now

    def end(self) -> None:
        self.done = self.rows()

    def __call__(self, row: dict) -> None:
        rows = self.rows()
        rundir.write_metrics(self.out, rows)
        rundir.atomic_save(
            {
                "config": self.config,
                "epoch": len(rows),
                "metrics": rows,
                "stage": self.stage,
                "model": {},
                "optimizer": {},
                "scheduler": {},
                "rng": {},
                "threads": torch.get_num_threads(),
            },
            self.out / rundir.CHECKPOINT,
        )
        if self.on_epoch is not None:
            self.on_epoch(rows[-1])


def _run_stage(
    name: str, config: TrainConfig, relay: _Relay, start: Start | None = None, shared: Path | None = None
) -> Summary:
    """One stage: skipped when its folder (or ``shared``: the same stage finished in another run's
    folder) holds a finished run of it, else trained or resumed."""
    finished = shared is not None and (rundir.read_summary(shared) or {}).get("status") == DONE
    folder = relay.begin(name, shared if finished else None)
    done = rundir.read_summary(folder)
    if done is not None and done.get("status") == DONE and (folder / rundir.MODEL).is_file():
        relay.end()
        return done  # type: ignore[return-value]  # a summary file this package wrote
    summary = train(
        config, folder, resume=(folder / rundir.CHECKPOINT).exists(), progress=False, on_epoch=relay, start=start
    )
    relay.end()
    return summary


def _prune(config: TrainConfig, out: Path, trained: Path, choice: Mapping[str, Any]) -> dict:
    """Prune the trained base model to the budget; ``RUN/pruned.pt`` keeps the result."""
    path = out / PRUNED
    if path.is_file():
        return rundir.load_checkpoint(path)
    base = config.arch.build()
    base.load_state_dict(rundir.load_checkpoint(trained / rundir.MODEL))
    spec = _spec(config)
    found = adapter.search_ratio(base, config.arch, spec, config.batch_size)
    record = {
        "method": spec["method"],
        "budget": spec["budget"],
        **found.record(),
        "layers": adapter.layer_counts(found.model),
        "structure": adapter.structure(base, found.model),
        "search_key": search_key(config),
        "source": str(out),
        "trained": str(trained),
        "precision": choice.get("precision"),
        "memory_format": choice.get("memory_format"),
    }
    weights = {k: v.detach().clone() for k, v in found.model.state_dict().items()}
    rundir.atomic_save({**record, "weights": weights}, path)
    rundir.atomic_write_json(out / PRUNED_JSON, record)
    return {**record, "weights": weights}


def _scratch_structure(config: TrainConfig, relay: _Relay) -> tuple[dict, Summary | None]:
    """(the global run's pruned record, the first stage's summary when the search ran here)."""
    sibling = _sibling(config, relay.out)
    if sibling is not None:
        return rundir.load_checkpoint(sibling), None
    first, _ = _epochs(config)
    s1 = _run_stage("train", _stage_config(config, first), relay)
    if s1["status"] != DONE:
        return {}, s1
    searching = dataclasses.replace(config, prune={**_spec(config), "method": PRUNE_GLOBAL})
    return _prune(searching, relay.out, relay.folder, s1["config"]), s1


def train_pruned(
    config: TrainConfig, out_dir: str | Path, state: dict | None, on_epoch: Callable[[dict], None] | None
) -> Summary:
    """Train the pruning baseline ``config`` (its ``prune`` set) into ``out_dir``; returns the
    summary written to ``summary.json``. ``state``: the run's checkpoint as the caller opened it
    (None: a fresh start)."""
    out = Path(out_dir)
    cfg = config.to_dict()
    if state is not None:  # the precision and layout the stages chose stay the run's
        cfg.update({k: state["config"][k] for k in ("precision", "memory_format")})
    rundir.start_run(out, cfg)
    relay = _Relay(cfg, out, on_epoch)
    first, rest = _epochs(config)
    s1: Summary | None
    if _spec(config)["method"] == PRUNE_SCRATCH:
        rec, s1 = _scratch_structure(config, relay)
        stage, epochs, weights = "scratch", config.epochs, None
    else:
        sibling = _sibling(config, out)
        shared = sibling.parent / STAGES / "train" if sibling is not None else None
        s1 = _run_stage("train", _stage_config(config, first, stop_at=config.stop_at), relay, shared=shared)
        rec = _prune(config, out, relay.folder, s1["config"]) if s1["status"] == DONE else {}
        stage, epochs, weights = "finetune", rest, rec.get("weights")
    if s1 is not None and s1["status"] != DONE:  # failed, or paused before pruning
        return _finish(config, relay, s1, None)
    choice = {k: rec.get(k) for k in ("precision", "memory_format") if rec.get(k) not in (None, "auto")}
    structure, arch, fresh = rec["structure"], config.arch, weights is None
    start = Start(build=lambda: adapter.apply_structure(arch.build(), structure, reinit=fresh), weights=weights)
    offset = first if stage == "finetune" else 0
    stop = _stage_stop(config, offset)
    if stop is not None and stop <= 0:  # paused just after pruning (kept in RUN/pruned.pt): its stage not begun
        assert s1 is not None  # stop_at >= 1, so only a finetune stage (offset first > 0) can start past it
        return _finish(config, relay, {**s1, "status": PAUSED, "stopped_at": first}, None)
    s2 = _run_stage(stage, _stage_config(config, epochs, choice or None, stop), relay, start)
    stopped = s2.get("stopped_at")
    if stopped is not None:  # paused in its stage: the run's own epoch
        s2 = {**s2, "stopped_at": offset + int(stopped)}
    return _finish(config, relay, s2, rec)


def _finish(config: TrainConfig, relay: _Relay, last: Summary, rec: dict | None) -> Summary:
    """The run's summary: the last stage's accuracies, every stage's epochs, the pruned model's resources."""
    out, rows = relay.out, relay.done
    rundir.write_metrics(out, rows)
    resources, pruned, failure = None, None, last["reason"] if last["status"] != DONE else None
    if last["status"] == DONE and rec is not None:
        model = load_pruned_model(config.arch, rec["structure"], relay.folder / rundir.MODEL)
        resources = adapter.model_resources(model, config.arch, config.batch_size, resolve_device(config.device))
        pruned = {k: v for k, v in rec.items() if k != "weights"}
        rundir.atomic_copy(relay.folder / rundir.MODEL, out / rundir.MODEL)
        if (relay.folder / rundir.OUTCOMES).is_file():  # its last stage's: the final model's is the last row
            rundir.atomic_copy(relay.folder / rundir.OUTCOMES, out / rundir.OUTCOMES)
    summary = summarise(
        relay.config,
        rows,
        failure,
        resources,
        Context.of(last),
        stage=relay.stage,
        pruned=pruned,
        stopped_at=last.get("stopped_at"),
    )
    rundir.atomic_write_json(out / rundir.SUMMARY, summary)
    return summary


def load_pruned_model(arch: Any, record: Mapping[str, Any], weights: str | Path) -> torch.nn.Module:
    """The pruned model: ``arch`` built, given the recorded structure, its weights loaded."""
    model = adapter.apply_structure(arch.build(), record)
    try:
        model.load_state_dict(rundir.load_checkpoint(weights))
    except RuntimeError as exc:
        raise UsageError(f"{weights}: weights do not match the pruned structure ({str(exc).splitlines()[0]})") from None
    return model.eval()


def run_structure(run_dir: str | Path) -> dict | None:
    """The pruned structure a run folder records (its summary, else ``pruned.pt``); None for a run
    that is not a pruning baseline. A pruning run not pruned yet is a UsageError."""
    run = Path(run_dir)
    if not (rundir.read_config(run) or {}).get("prune"):
        return None
    s = rundir.read_json(run / rundir.SUMMARY) or {}
    if isinstance(s.get("pruned"), Mapping):
        return dict(s["pruned"].get("structure") or {})
    if (run / PRUNED).is_file():
        return dict(rundir.load_checkpoint(run / PRUNED).get("structure") or {})
    raise UsageError(f"{run}: this pruning run has not pruned its model yet (the base model trains in {run / STAGES})")
