"""Sweep scaling on this machine, and Ray's scheduling overhead per shard.

    .venv/bin/python benchmarks/sweep_scaling.py [--units 64] [--steps 20]

1. The same sweep (shallow CNN, conv4, AM) with 1 and with 2 CPU workers: units per second and the ratio.
2. Overhead per shard: a stream of empty shards through the same actor pool and `ray.wait` loop,
   against the same number of direct calls: the difference is what Ray adds per shard.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import ray

from repsub.sweep import parse_config, ray_runner
from repsub.sweep.plan import UnitShard, plan_unit_shards


@ray.remote(num_cpus=1)
class EmptyWorker:
    def run(self, shard):
        return {"shard": shard.id}


def sweep_rate(workers: int, units: int, steps: int, units_per_shard: int) -> float:
    """Units per second of warm workers (model loaded), through the sweep's own actors and commit path."""
    with tempfile.TemporaryDirectory() as out:
        config = parse_config({
            "model": "shallow_cnn", "out": out, "layers": ["conv4"], "methods": ["am"], "units": f"0-{units - 1}",
            "optimization": {"steps": steps, "image_size": 32, "batch_size": units_per_shard},
            "sharding": {"units_per_shard": units_per_shard}, "workers": {"count": workers, "cpus": 1},
        })  # fmt: skip
        actors = ray_runner.start_workers(config, None)
        ray.get([actor.info.remote() for actor in actors])  # started, model loaded
        started = time.perf_counter()
        failures = ray_runner.run_shards(actors, plan_unit_shards(config), lambda shard, result: None)
        elapsed = time.perf_counter() - started
        assert not failures, failures
        for actor in actors:
            ray.kill(actor)
        return units / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--units-per-shard", type=int, default=16)
    parser.add_argument("--empty-shards", type=int, default=400)
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")

    rates = {n: sweep_rate(n, args.units, args.steps, args.units_per_shard) for n in (1, 2)}
    print(
        f"sweep of {args.units} conv4 units, {args.steps} steps, {args.units_per_shard} units/shard "
        "(warm workers)"
    )
    print(f"  1 worker : {rates[1]:7.2f} units/s")
    print(f"  2 workers: {rates[2]:7.2f} units/s   ratio {rates[2] / rates[1]:.2f}x")

    shards = [UnitShard("am", "conv1", (i,)) for i in range(args.empty_shards)]
    workers = [EmptyWorker.remote() for _ in range(2)]
    ray.get([w.run.remote(shards[0]) for w in workers])  # started and warm
    started = time.perf_counter()
    failures = ray_runner.run_shards(workers, shards, lambda shard, result: None)
    through_ray = time.perf_counter() - started
    assert not failures
    local = EmptyWorker.__ray_actor_class__()
    started = time.perf_counter()
    for shard in shards:
        local.run(shard)
    direct = time.perf_counter() - started
    per_shard_ms = (through_ray - direct) / len(shards) * 1000
    print(
        f"empty shards: {len(shards)} through 2 actors in {through_ray:.2f} s, directly in {direct * 1000:.1f} ms: "
        f"{per_shard_ms:.2f} ms of Ray overhead per shard"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
