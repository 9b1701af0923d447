"""`run --window`: at most one successful run per job and window; and the Prometheus
textfile that `run` and `status` keep up to date from the catalog."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Result, cli, repo_with_password_file


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """alpha backs up; locked needs the sql-dump marker; never backs up a missing path."""
    repo = repo_with_password_file(tmp_path)
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    for name in ("alpha", "locked"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "f.txt").write_text(f"{name}\n" * 100)
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n'
        f'[metrics]\ntextfile = "{tmp_path}/metrics/strongroom.prom"\n\n'
        f'[clients.alpha]\ntransport = "local"\nsources = ["{tmp_path}/data/alpha"]\n\n'
        f'[clients.locked]\ntransport = "local"\nsources = ["{tmp_path}/data/locked"]\n'
        '[[clients.locked.requires]]\nkind = "marker"\nname = "sql-dump"\nmax_age = "12h"\n\n'
        f'[clients.never]\ntransport = "local"\nsources = ["{tmp_path}/data/missing"]\n'
    )
    (tmp_path / "metrics").mkdir()
    return tmp_path


def _run(*args: str) -> tuple[Result, dict[str, object]]:
    r = cli("run", *args, "--json")
    return r, [json.loads(line) for line in r.stdout.splitlines() if line.strip()][-1]


def _snapshots(fleet: Path, client: str) -> list[str]:
    r = cli("--repo", str(fleet / "repo"), "snapshots", "--client", client, "--json")
    assert r.code == 0, r.stderr
    return [s["id"] for s in json.loads(r.stdout)]


def _started(client: str) -> int:
    r = cli("events", "list", "--json", "--client", client, "--event", "run.started")
    return len(json.loads(r.stdout))


# --- windows -------------------------------------------------------------------------


def test_a_second_run_in_the_same_window_names_the_first_and_writes_nothing(
    fleet: Path,
) -> None:
    r, first = _run("alpha", "--window", "2026-11-25")
    assert r.code == 0 and first["snapshot_id"], r.stderr
    assert _snapshots(fleet, "alpha") == [first["snapshot_id"]]

    r, again = _run("alpha", "--window", "2026-11-25")
    assert r.code == 0
    assert again["existing_run_id"] == first["run_id"]
    assert again["window"] == "2026-11-25"
    assert str(first["run_id"]) in str(again["message"])
    assert _snapshots(fleet, "alpha") == [first["snapshot_id"]]  # no new snapshot
    assert _started("alpha") == 1  # and no new run

    r = cli("run", "alpha", "--window", "2026-11-25")  # the human output says so too
    assert r.code == 0 and str(first["run_id"]) in r.stdout

    r, other = _run("alpha", "--window", "2026-11-26")
    assert r.code == 0 and other["run_id"] != first["run_id"]
    assert "existing_run_id" not in other
    assert len(_snapshots(fleet, "alpha")) == 2
    assert _started("alpha") == 2


def test_a_failed_attempt_does_not_use_up_the_window(fleet: Path) -> None:
    r, failed = _run("locked", "--window", "night-1")
    assert r.code == 21 and failed["snapshot_id"] is None
    r, failed_again = _run("locked", "--window", "night-1")
    assert r.code == 21 and failed_again["run_id"] != failed["run_id"]

    assert cli("mark", "sql-dump", "--client", "locked").code == 0
    r, ok = _run("locked", "--window", "night-1")
    assert r.code == 0 and ok["snapshot_id"], ok
    assert "existing_run_id" not in ok

    r, skipped = _run("locked", "--window", "night-1")
    assert r.code == 0 and skipped["existing_run_id"] == ok["run_id"]
    assert _snapshots(fleet, "locked") == [ok["snapshot_id"]]


def test_windows_are_per_job(fleet: Path) -> None:
    assert _run("alpha", "--window", "w")[0].code == 0
    assert cli("mark", "sql-dump", "--client", "locked").code == 0
    r, other = _run("locked", "--window", "w")
    assert r.code == 0 and "existing_run_id" not in other
    assert len(_snapshots(fleet, "locked")) == 1


# --- metrics -------------------------------------------------------------------------


def _metrics(fleet: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (fleet / "metrics" / "strongroom.prom").read_text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
           **labels: str) -> float:  # fmt: skip
    return values[(name, tuple(sorted(labels.items())))]


def test_run_writes_the_fleet_metrics(fleet: Path) -> None:
    before = time.time()
    r = cli("run", "alpha", "locked", "never")
    assert r.code == 2, r.stdout + r.stderr  # never's missing source (2) is the worst
    assert "cannot back up" in r.stdout
    values = _metrics(fleet)

    success = _value(values, "strongroom_last_success_timestamp_seconds", client="alpha",
                     job="default")  # fmt: skip
    assert before - 5 < success <= time.time() + 5
    assert _value(values, "strongroom_last_run_exit_code", client="alpha", job="default") == 0
    assert _value(values, "strongroom_last_run_files", client="alpha", job="default") == 1
    assert _value(values, "strongroom_last_run_bytes", client="alpha", job="default",
                  kind="read") == len("alpha\n" * 100)  # fmt: skip

    assert _value(values, "strongroom_last_run_exit_code", client="locked", job="default") == 21
    assert _value(values, "strongroom_last_success_timestamp_seconds", client="locked",
                  job="default") == 0  # fmt: skip
    never = {c: _value(values, "strongroom_client_never_succeeded", client=c, job="")
             for c in ("alpha", "locked", "never")}  # fmt: skip
    assert never == {"alpha": 0, "locked": 1, "never": 1}

    # The next success is reflected by the next writer (here `status`).
    assert cli("mark", "sql-dump", "--client", "locked").code == 0
    assert cli("run", "locked").code == 0
    (fleet / "metrics" / "strongroom.prom").unlink()
    assert cli("status").code == 0
    values = _metrics(fleet)
    assert _value(values, "strongroom_last_run_exit_code", client="locked", job="default") == 0
    assert _value(values, "strongroom_client_never_succeeded", client="locked", job="") == 0
    assert _value(values, "strongroom_client_never_succeeded", client="never", job="") == 1


def test_without_a_metrics_table_no_file_is_written(fleet: Path) -> None:
    config = fleet / "strongroom.toml"
    metrics = f'[metrics]\ntextfile = "{fleet}/metrics/strongroom.prom"\n'
    assert metrics in config.read_text()
    config.write_text(config.read_text().replace(metrics, ""))
    assert cli("run", "alpha").code == 0
    assert list((fleet / "metrics").iterdir()) == []
