"""Running shards on Ray: long-lived actors (one model each) fed with `ray.wait` backpressure.

Ray's GPU tasks default to one call per worker process, which would reload the model for every
shard; an actor loads it once. A worker process that dies is restarted by Ray and its in-flight
shard retried (shards commit idempotently); a shard whose actor was lost beyond Ray's own retries
is queued again, up to INFRA_ATTEMPTS times. An exception raised by a shard itself (say NaN in the optimization) is
deterministic: it is not retried but reported, after the other shards finished and committed. A
storage error (the bucket unreachable after retries) stops the dispatch of further shards.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

from repsub.errors import RunError
from repsub.sweep.config import SweepConfig
from repsub.sweep.plan import BandShard, DataShard, FitDataShard, FitShard, ImportanceShard, UnitShard
from repsub.sweep.resources import ClusterResourceError, wait_for_fitting_node, workers_fit_now
from repsub.sweep.work import ShardRunner

INFRA_ATTEMPTS = 3  # times a shard is handed out again after its actor was lost for good


@ray.remote
class ShardWorker:
    def __init__(self, config: SweepConfig, num_classes: int | None):
        self.runner = ShardRunner(config, num_classes)

    def info(self) -> dict:
        return {
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "device": self.runner.device,
        }

    def run(
        self, shard: DataShard | BandShard | UnitShard | ImportanceShard | FitDataShard | FitShard
    ) -> dict:
        if isinstance(shard, BandShard):
            return self.runner.run_band_shard(shard)
        if isinstance(shard, DataShard):
            return self.runner.run_data_shard(shard)
        if isinstance(shard, FitDataShard):
            return self.runner.run_fit_data_shard(shard)
        if isinstance(shard, FitShard):
            return self.runner.run_fit_shard(shard)
        if isinstance(shard, ImportanceShard):
            return self.runner.run_importance_shard(shard)
        return self.runner.run_unit_shard(shard)


@dataclass
class ShardFailure:
    shard: str
    error: str


def connect(address: str | None) -> None:
    """Join the cluster at `address` ('auto', 'ray://host:port'), start a local one ('local'), or
    Ray's default (a running local cluster if there is one, else a new one)."""
    if ray.is_initialized():
        return
    kwargs = {"logging_level": "WARNING", "log_to_driver": True}
    if address == "local":
        ray.init(address="local", include_dashboard=False, **kwargs)
    else:
        ray.init(address=address, **kwargs)


def start_workers(config: SweepConfig, num_classes: int | None) -> list:
    """The worker actors, once the cluster can host them: actors that no node (and no node the autoscaler can
    add) fits would stay pending forever, so that fails with what was asked and what the cluster has."""
    w = config.workers
    certain = workers_fit_now(w)  # raises at once when nothing can host an actor
    options = {"num_cpus": w.cpus, "num_gpus": w.gpus, "max_restarts": -1, "max_task_retries": 3}
    workers = [ShardWorker.options(**options).remote(config, num_classes) for _ in range(w.count)]
    if not certain:  # an autoscaler that hides its node types: the pending actors are its demand
        try:
            wait_for_fitting_node(w)
        except ClusterResourceError:
            for worker in workers:
                ray.kill(worker)
            raise
    return workers


def run_shards(
    workers: list,
    shards: list,
    on_done: Callable[[DataShard | UnitShard, dict], None],
    in_flight_per_worker: int = 1,
) -> list[ShardFailure]:
    """Run every shard on the workers; returns the shards that failed (each named with its error)."""
    queue = deque(shards)
    attempts: dict[str, int] = {}
    running: dict = {}  # object ref -> (worker, shard)
    failures: list[ShardFailure] = []
    idle = [w for w in workers for _ in range(in_flight_per_worker)]

    def submit(worker) -> None:
        shard = queue.popleft()
        running[worker.run.remote(shard)] = (worker, shard)

    while queue and idle:
        submit(idle.pop())
    while running:
        [ref], _ = ray.wait(list(running), num_returns=1)
        worker, shard = running.pop(ref)
        try:
            on_done(shard, ray.get(ref))
        except RayTaskError as err:  # raised by the shard's own code: deterministic, not retried
            cause = err.cause if getattr(err, "cause", None) is not None else err
            failures.append(ShardFailure(shard.id, f"{type(cause).__name__}: {cause}"))
            if isinstance(cause, RunError) and queue:  # storage is failing: the rest would fail alike
                failures.append(
                    ShardFailure(f"{len(queue)} more shard(s)", "not started after the storage error")
                )
                queue.clear()
        except (RayActorError, WorkerCrashedError) as err:  # the worker was lost beyond Ray's own retries
            attempts[shard.id] = attempts.get(shard.id, 0) + 1
            if attempts[shard.id] < INFRA_ATTEMPTS:
                queue.appendleft(shard)
            else:
                failures.append(ShardFailure(shard.id, f"worker lost {INFRA_ATTEMPTS} times: {err}"))
        if queue:
            submit(worker)
    return failures
