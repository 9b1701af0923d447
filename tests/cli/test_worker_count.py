"""How many worker processes a backup and a restore fork (cli.context)."""

from __future__ import annotations

import pytest

from strongroom.cli.context import App
from strongroom.errors import UsageError


@pytest.mark.parametrize(("cores", "backup", "restore"), [(1, 0, 1), (2, 1, 2), (8, 7, 8)])
def test_a_restore_forks_a_worker_per_core_and_a_backup_one_fewer(
    monkeypatch: pytest.MonkeyPatch, cores: int, backup: int, restore: int
) -> None:
    # A restore's parent writes files too: one writer more than cores
    # (docs/performance.md, "A tenth host"); a backup's parent reads files beside them.
    monkeypatch.delenv("STRONGROOM_WORKER_PROCESSES", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: cores)
    assert App().worker_processes() == backup
    assert App().worker_processes(restore=True) == restore


def test_the_environment_chooses_for_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRONGROOM_WORKER_PROCESSES", "0")
    assert App().worker_processes() == 0
    assert App().worker_processes(restore=True) == 0
    monkeypatch.setenv("STRONGROOM_WORKER_PROCESSES", "two")
    with pytest.raises(UsageError, match="whole number"):
        App().worker_processes(restore=True)
