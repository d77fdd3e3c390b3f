"""The Dask LocalCluster of a campaign leaves its workers' CPU to the cases
(hil.campaign.execute.QUIET_WORKERS): no statistical profiler sampling the case's thread,
the event loop's health and the system looked at seldom. With Dask's defaults the profiler
samples every 10 ms (shown first), which cost a case ~10 % of its CPU here (B4 measures it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest

from hil.campaign.execute import QUIET_WORKERS, RunSettings, dask_client


def busy() -> int:
    """A case stand-in: ~0.3 s of Python in the worker's task thread."""
    return sum(i * i for i in range(2_000_000))


def samples(dask_worker: Any) -> int:
    """The stack samples the worker's profiler has taken (its history of 1 s cycles and the
    current one)."""
    history = sum(int(profile["count"]) for _, profile in dask_worker.profile_history)
    return history + int(dask_worker.profile_recent["count"])


def settings_on(client: Any) -> list[dict[str, object]]:
    """The worker settings of :data:`QUIET_WORKERS` as each worker sees them."""
    seen = client.run(lambda: {k: dask.config.get(k) for k in QUIET_WORKERS})
    return list(seen.values())


def test_dask_defaults_profile_the_case_thread(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        # the hazard: sampled every 10 ms. The profiler is a thread of its own: on a machine
        # busy with other tests it can miss one 0.3 s task (seen once), so up to 5 tasks run
        for _ in range(5):
            client.submit(busy, pure=False).result()
            if sum(client.run(samples).values()) > 0:
                break
        assert sum(client.run(samples).values()) > 0


def test_the_campaigns_local_cluster_runs_its_workers_quiet(tmp_path: Path) -> None:
    settings = RunSettings(out=tmp_path, executor="dask", workers=2, progress=False)
    with dask_client(settings, retries=0) as client:
        assert settings_on(client) == [QUIET_WORKERS, QUIET_WORKERS]
        client.gather([client.submit(busy, pure=False) for _ in range(2)])
        assert sum(client.run(samples).values()) == 0  # nothing sampled


def test_design_space_and_tuning_clusters_run_their_workers_quiet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both build their LocalCluster with the campaign's :func:`local_dask_client`."""
    import hil.campaign.execute as execute
    from hil.design_space_exec import run_dask
    from hil.tuning.evaluate import CaseExecutor, ExecutorSettings

    seen: list[list[dict[str, object]]] = []
    real = execute.local_dask_client

    @contextlib.contextmanager
    def spying(*args: Any, **kwargs: Any) -> Iterator[Any]:
        with real(*args, **kwargs) as client:
            seen.append(settings_on(client))
            yield client

    monkeypatch.setattr(execute, "local_dask_client", spying)
    run_dask([], 1, lambda result: None)  # the design space's cluster, no points
    with CaseExecutor(ExecutorSettings("dask", workers=1), retries=1) as tuning:
        allowed = tuning._client.run_on_scheduler(
            lambda: dask.config.get("distributed.scheduler.allowed-failures")
        )
    assert seen == [[QUIET_WORKERS], [QUIET_WORKERS]]
    assert allowed == 1  # the tuner's retries still reach the scheduler
