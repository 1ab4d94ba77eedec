"""The SQLite results store: keys, atomic claims, dead-owner takeover, recording, reindexing."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filter_templates.core.errors import UsageError
from filter_templates.sweep.store import Heartbeats, Store, StoreError, canonical_json, owner_alive, point_key


def cfg(width: float = 0.1, template: str = "base", dataset: str = "digits", seed: int = 0, **extra) -> dict:
    """A TrainConfig.to_dict()-shaped dict (the store never needs torch)."""
    d = {
        "arch": {
            "family": "vgg19",
            "template": template,
            "width": width,
            "classes": 10,
            "filters": [3, 3, 6],
            "divisor": 1,
            "floor": 1,
            "stem_width": width,
        },
        "dataset": dataset,
        "data_dir": None,
        "download": False,
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "seed": seed,
        "device": "auto",
        "channels_last": True,
        "bf16": True,
        "limit_train": None,
        "limit_test": None,
    }
    d.update(extra)
    return d


def grid(n: int = 4) -> list[dict]:
    return [cfg(width=0.05 * (i + 1)) for i in range(n)]


def fill(store: Store, configs: list[dict], root: Path) -> list[str]:
    store.add_points((c, str(root / f"run{i}")) for i, c in enumerate(configs))
    return [point_key(c)[0] for c in configs]


def summary(acc: float = 0.5, status: str = "done", reason: str | None = None) -> dict:
    return {
        "status": status,
        "reason": reason,
        "final_acc": acc,
        "best_acc": acc + 0.1,
        "best_epoch": 2,
        "epochs": 2,
        "wall_s": 3.5,
        "device": "cpu",
        "resources": {
            "params": 1234,
            "flops": 5678,
            "train_memory_bytes": 999,
            "latency_s": {"batch64": 0.01, "batch1": 0.001},
            "batch_size": 64,
            "device": "cpu",
            "threads": 2,
        },
    }


def test_key_ignores_where_and_how_but_not_what():
    a = point_key(cfg())[0]
    assert point_key(cfg(data_dir="/elsewhere", device="cuda", download=True))[0] == a
    assert point_key(cfg(seed=1))[0] != a
    assert point_key(cfg(epochs=3))[0] != a
    assert point_key(cfg(width=0.2))[0] != a


@settings(max_examples=30, deadline=None)
@given(st.permutations(list(cfg().items())))
def test_key_does_not_depend_on_dict_order(items):
    assert point_key(dict(items)) == point_key(cfg())


def test_new_store_is_wal_with_busy_timeout(tmp_path):
    with Store(tmp_path / "r.sqlite", timeout=7) as s:
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] == 7000
        assert s.integrity_check() == "ok"


def test_add_points_is_idempotent_and_keeps_status(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(3), tmp_path)
        assert s.counts() == {"pending": 3, "running": 0, "done": 0, "failed": 0}
        c = s.claim(keys)
        s.finish(c["key"], c["claim_token"], summary())
        assert s.add_points([(cfg(width=0.05), "x"), (cfg(width=0.5), "y")]) == 1
        assert s.counts() == {"pending": 3, "running": 0, "done": 1, "failed": 0}
        row = s.get(keys[0])
        assert row["status"] == "done" and row["family"] == "vgg19" and row["width"] == pytest.approx(0.05)


def test_claim_takes_rows_in_the_order_given_and_only_once(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(3), tmp_path)
        order = [keys[2], keys[0], keys[1]]
        got = [s.claim(order)["key"] for _ in range(3)]
        assert got == order
        assert s.claim(order) is None  # all held by this live process
        row = s.get(keys[0])
        assert row["status"] == "running" and row["attempts"] == 1
        assert row["claimed_by"] == f"{__import__('os').getpid()}@{socket.gethostname()}"


def test_finish_records_everything_and_only_for_the_claim_holder(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(1), tmp_path)
        c = s.claim(keys)
        assert not s.record_epoch(keys[0], "not-the-token", {"epoch": 1, "test_acc": 0.3})
        assert s.record_epoch(keys[0], c["claim_token"], {"epoch": 1, "test_acc": 0.3})
        assert s.record_epoch(keys[0], c["claim_token"], {"epoch": 2, "test_acc": 0.4})
        assert s.record_epoch(keys[0], c["claim_token"], {"epoch": 2, "test_acc": 0.45})  # replayed epoch
        assert [e["test_acc"] for e in s.get(keys[0])["epoch_metrics"]] == [0.3, 0.45]
        assert not s.finish(keys[0], "stolen", summary())
        assert s.finish(keys[0], c["claim_token"], summary(0.6), run_dir="/runs/x")
        row = s.get(keys[0])
        assert row["status"] == "done" and row["final_acc"] == 0.6 and row["best_acc"] == pytest.approx(0.7)
        assert (row["params"], row["flops"], row["train_memory_bytes"]) == (1234, 5678, 999)
        assert (row["latency_batch_s"], row["latency_b1_s"], row["threads"], row["batch_size"]) == (0.01, 0.001, 2, 64)
        assert row["resources"]["device"] == "cpu" and row["run_dir"] == "/runs/x"
        assert row["claimed_by"] is None and row["wall_s"] == 3.5 and row["epochs_done"] == 2
        assert s.claim(keys) is None  # done rows are never claimed again


def test_failed_rows_keep_reason_and_retry_only_when_asked(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(2), tmp_path)
        c = s.claim(keys)
        s.fail(c["key"], c["claim_token"], "loss became nan in epoch 1")
        row = s.get(c["key"])
        assert row["status"] == "failed" and "nan" in row["reason"]
        assert s.claim(keys)["key"] == keys[1]
        assert s.claim(keys) is None
        assert s.reset_failed(keys) == 1
        again = s.claim(keys)
        assert again["key"] == keys[0] and again["attempts"] == 2 and s.get(keys[0])["reason"] is None


def test_release_puts_the_row_back(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(1), tmp_path)
        c = s.claim(keys)
        assert s.release(keys[0], c["claim_token"])
        assert s.get(keys[0])["status"] == "pending"
        assert s.claim(keys)["key"] == keys[0]


def test_rows_of_a_dead_owner_are_reclaimed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(1), tmp_path)
        s.claim(keys, owner=f"{dead.pid}@{socket.gethostname()}")
        assert owner_alive(f"{dead.pid}@{socket.gethostname()}") is False
        c = s.claim(keys)
        assert c is not None and c["reclaimed"] and c["previous_owner"].startswith(f"{dead.pid}@")
        assert [e["event"] for e in s.events(keys[0])] == ["add", "claim", "reclaim"]


def test_other_hosts_are_trusted_until_their_heartbeat_goes_stale(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(1), tmp_path)
        other = s.claim(keys, owner="123@some-other-host")
        assert owner_alive("123@some-other-host") is None
        assert s.claim(keys, stale_after=60) is None
        assert s.heartbeat({keys[0]: other["claim_token"]}) == 1
        s.db.execute("UPDATE runs SET heartbeat=? WHERE key=?", (time.time() - 120, keys[0]))
        assert s.claim(keys, stale_after=60)["reclaimed"]
        assert s.heartbeat({keys[0]: other["claim_token"]}) == 0  # the old owner learns it lost the row


def test_claim_many_claims_each_row_once(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(5), tmp_path)
        first = s.claim(keys)
        rest = s.claim_many(keys)
        assert [r["key"] for r in rest] == keys[1:] and first["key"] == keys[0]


_CLAIMER = """
import sys, json
from filter_templates.sweep.store import Store
keys = json.loads(sys.argv[2])
got = []
with Store(sys.argv[1]) as s:
    while (c := s.claim(keys)) is not None:
        got.append(c["key"])
        s.record_epoch(c["key"], c["claim_token"], {"epoch": 1, "test_acc": 0.5})
        s.finish(c["key"], c["claim_token"], {"status": "done", "final_acc": 0.5})
print(json.dumps(got))
"""


def test_concurrent_processes_never_claim_the_same_row(tmp_path):
    db = tmp_path / "r.sqlite"
    configs = [cfg(width=0.01 * (i + 1)) for i in range(60)]
    keys = [point_key(c)[0] for c in configs]
    with Store(db) as s:
        fill(s, configs, tmp_path)
    procs = [
        subprocess.Popen([sys.executable, "-c", _CLAIMER, str(db), json.dumps(keys)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    claimed = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    flat = [k for got in claimed for k in got]
    assert sorted(flat) == sorted(keys)  # every row once, none twice
    with Store(db) as s:
        assert s.counts() == {"pending": 0, "running": 0, "done": 60, "failed": 0}
        assert all(r["attempts"] == 1 for r in s.rows())
        assert s.integrity_check() == "ok"


def test_reindex_rebuilds_rows_from_run_folders(tmp_path):
    done_dir, partial_dir = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    for d, c in ((done_dir, cfg(width=0.1)), (partial_dir, cfg(width=0.2))):
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(c))
        (d / "metrics.jsonl").write_text(
            "".join(json.dumps({"epoch": e, "test_acc": 0.1 * e}) + "\n" for e in (1, 2)) + '{"epoch": 3, "test_'
        )  # torn last line
    s1 = summary(0.8) | {"config": cfg(width=0.1)}
    (done_dir / "summary.json").write_text(json.dumps(s1))
    with Store(tmp_path / "new.sqlite") as s:
        assert s.reindex_run(done_dir) == point_key(cfg(width=0.1))[0]
        assert s.reindex_run(partial_dir) == point_key(cfg(width=0.2))[0]
        assert s.reindex_run(tmp_path) is None  # no config.json
        a, b = s.get(point_key(cfg(width=0.1))[0]), s.get(point_key(cfg(width=0.2))[0])
        assert a["status"] == "done" and a["final_acc"] == 0.8 and len(a["epoch_metrics"]) == 2
        assert a["run_dir"] == str(done_dir)
        assert b["status"] == "pending" and b["epochs_done"] == 2


def test_bad_files_are_usage_errors(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_text("this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable results store"):
        Store(junk)
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing.sqlite", create=False)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a results store"):
        Store(other, create=False)
    with pytest.raises(UsageError, match="not a training configuration"):
        Store(tmp_path / "ok.sqlite").add_points([({"dataset": "x"}, "d")])


def test_non_finite_numbers_are_stored_as_null(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(1), tmp_path)
        c = s.claim(keys)
        s.record_epoch(keys[0], c["claim_token"], {"epoch": 1, "train_loss": float("nan")})
        s.finish(keys[0], c["claim_token"], {"status": "failed", "reason": "nan", "final_acc": float("nan")})
        row = s.get(keys[0])
        assert row["final_acc"] is None and row["epoch_metrics"][0]["train_loss"] is None
        assert canonical_json(row["epoch_metrics"])  # still valid JSON


def budget_point(
    value: float, run_key: str | None, template: str = "base", seed: int = 0, reason: str | None = None
) -> dict:
    """A BudgetPoint.record()-shaped dict."""
    ident = {
        "budget": {"key": "params", "value": value},
        "arch": {"family": "vgg19", "template": template},
        "dataset": "digits",
        "seed": seed,
        "epochs": 2,
    }
    fitted = run_key is not None
    return {
        "ident": ident,
        "budget_key": "params",
        "budget_value": value,
        "family": "vgg19",
        "method": template,
        "dataset": "digits",
        "seed": seed,
        "status": "fitted" if fitted else "unreachable",
        "reason": reason,
        "width": 0.1 if fitted else None,
        "filters": [3, 3, 6] if fitted else None,
        "fit": {"params": 999, "capped": False} if fitted else None,
        "run_key": run_key,
    }


def test_budget_points_record_the_fit_and_join_their_run(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(1), tmp_path)
        # two budgets that fit the same model share its run; an unreachable budget has none
        points = [
            budget_point(1e6, keys[0]),
            budget_point(2e6, keys[0]),
            budget_point(10, None, reason="budget params=10 is below the smallest reachable vgg19 model"),
        ]
        assert s.add_budget_points(points) == 3
        assert s.add_budget_points(points[:1]) == 0  # the same point again: refreshed, not added
        assert s.counts() == {"pending": 1, "running": 0, "done": 0, "failed": 0}  # nothing to train was added
        c = s.claim(keys)
        s.finish(c["key"], c["claim_token"], summary(0.7))
        rows = s.budget_rows()
        assert [(r["budget_value"], r["status"]) for r in rows] == [
            (1e6, "fitted"),
            (2e6, "fitted"),
            (10, "unreachable"),
        ]
        assert rows[0]["run"]["key"] == rows[1]["run"]["key"] == keys[0] and rows[0]["run"]["final_acc"] == 0.7
        assert rows[0]["fit"] == {"params": 999, "capped": False} and rows[0]["filters"] == [3, 3, 6]
        assert rows[0]["width"] == 0.1 and rows[0]["ident"]["budget"] == {"key": "params", "value": 1e6}
        assert rows[2]["run"] is None and rows[2]["width"] is None and "below the smallest" in rows[2]["reason"]
        order = [r["key"] for r in rows][::-1]
        assert [r["key"] for r in s.budget_rows(order)] == order
        with pytest.raises(ValueError, match="status"):
            s.add_budget_points([{**points[0], "status": "skipped"}])


def test_a_store_written_before_budget_points_gains_the_table(tmp_path):
    db = tmp_path / "old.sqlite"
    with Store(db) as s:
        fill(s, grid(2), tmp_path)
        s.db.execute("DROP TABLE budget_points")
    with Store(db, create=False) as s:
        assert s.budget_rows() == [] and s.counts()["pending"] == 2


def test_heartbeats_refresh_held_claims_from_their_own_thread(tmp_path):
    with Store(tmp_path / "r.sqlite") as s:
        keys = fill(s, grid(2), tmp_path)
        held, other = s.claim(keys), s.claim(keys)
        with Heartbeats(s.path, {held["key"]: held["claim_token"], other["key"]: "not-the-token"}, every=0.02):
            deadline = time.time() + 10
            while s.get(held["key"])["heartbeat"] == held["heartbeat"] and time.time() < deadline:
                time.sleep(0.02)
        assert s.get(held["key"])["heartbeat"] > held["heartbeat"]  # refreshed
        assert s.get(other["key"])["heartbeat"] == other["heartbeat"]  # another token's claim is left alone


def test_a_store_of_an_older_schema_is_refused_with_how_to_rebuild_it(tmp_path):
    db = tmp_path / "old.sqlite"
    Store(db).close()
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value='1' WHERE name='schema_version'")
    with pytest.raises(StoreError, match=r"older filter-templates .* sweep --reindex") as caught:
        Store(db)
    assert "\n" not in str(caught.value)
