"""Sweep points as Ray tasks: `--ray local` (a Ray on this machine) or `--ray ADDRESS` (a cluster).

The only module that imports Ray (optional: pip install 'tensoredge[ray]'). What every point shares
(model, calibration ids, test windows, dense reference log-probabilities) goes into the object
store once; a preparation (one method's factorizations) is one task whose result the points of
that method take by reference. Points are collected with `ray.wait` as they finish; a task whose
worker died is retried (`max_retries`), and a point that still fails is recorded with its reason.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

from toolkit.errors import TensoredgeError
from toolkit.sweep.grid import Point, Prepare, RunPoint, one_line

MISSING = "--ray needs Ray: pip install 'tensoredge[ray]'"
RETRIES = 2  # a task whose worker process (or node) died runs again, up to this many times


def require_ray() -> None:
    """The one-line error when Ray is not installed (checked before any model is loaded)."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise TensoredgeError(MISSING)


def _task(run: RunPoint, threads: int, spec: dict, shared: object, prepared: object) -> dict:
    import torch

    torch.set_num_threads(threads)
    return run(spec, shared, prepared)


def _prepare_task(prepare: Prepare, threads: int, shared: object, key: str) -> object:
    import torch

    torch.set_num_threads(threads)
    return prepare(shared, key)


class RayExecutor:
    """Points as Ray tasks: `task_cpus` CPUs (torch threads) each, and `task_gpus` of a GPU (0: none;
    a fraction lets several small-model points share one GPU)."""

    def __init__(self, address: str, shared: object, run: RunPoint, prepare: Prepare | None = None,
                 task_cpus: int = 1, task_gpus: float = 0.0, progress: Callable[[str], None] = print):
        require_ray()
        import ray

        self.ray, self.run, self.prepare, self.task_cpus = ray, run, prepare, task_cpus
        self.started = not ray.is_initialized()
        if self.started:
            quiet = {"log_to_driver": False, "include_dashboard": False, "configure_logging": False}
            if address == "local":
                ray.init(address="local", num_cpus=os.cpu_count(), **quiet)  # a new one, never another's
            else:
                try:
                    ray.init(address=address, **quiet)
                except (ConnectionError, ValueError, RuntimeError) as exc:
                    raise TensoredgeError(f"--ray {address}: no Ray cluster there ({one_line(exc)}); "
                                          "start one with `ray start --head` or use --ray local") from None
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if task_cpus > cpus:
            raise TensoredgeError(f"--task-cpus {task_cpus}: the Ray cluster has {cpus} CPUs; use at most {cpus}")
        if task_gpus > gpus:
            raise TensoredgeError(f"--device cuda: {task_gpus:g} GPU(s) per point and the Ray cluster has {gpus}; "
                                  "add GPU nodes, lower --task-gpus or use --device cpu")
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        self.describe = f"Ray ({address}): {nodes} node(s), {cpus} CPUs, {gpus} GPUs; {task_cpus} CPU(s) per point" \
            + (f", {task_gpus:g} GPU" if task_gpus else "")
        progress(self.describe)
        options = {"num_cpus": task_cpus, "num_gpus": task_gpus, "max_retries": RETRIES}
        self.point_task = ray.remote(_task).options(**options)
        self.prep_task = ray.remote(_prepare_task).options(**options)
        self.shared = ray.put(shared)  # once per sweep; every task takes the reference
        self.prepared: dict[str, object] = {}  # key -> ObjectRef of the preparation
        self.flying: dict[object, Point] = {}  # ObjectRef of the row -> its point

    def submit(self, point: Point) -> None:
        prepared = None
        if point.prepare is not None:
            if point.prepare not in self.prepared:
                self.prepared[point.prepare] = self.prep_task.remote(self.prepare, self.task_cpus, self.shared,
                                                                     point.prepare)
            prepared = self.prepared[point.prepare]
        self.flying[self.point_task.remote(self.run, self.task_cpus, point.spec, self.shared, prepared)] = point

    def next_done(self) -> tuple[Point, dict]:
        ready: list = []
        while not ready:  # short waits: SIGINT/SIGTERM stop the sweep (finished points are already recorded)
            try:
                ready, _ = self.ray.wait(list(self.flying), num_returns=1, timeout=2.0)
            except SystemError as exc:  # Ray wraps what a signal handler raised (device_bench.interrupt)
                raise (exc.__cause__ or exc.__context__ or exc) from None
        ref = ready[0]
        point = self.flying.pop(ref)
        try:
            return point, self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the point's code (or its preparation) raised
            return point, {**point.spec, "failed": one_line(exc.cause if exc.cause is not None else exc)}
        except self.ray.exceptions.RayError as exc:  # worker or node died past its retries, out of memory, ...
            return point, {**point.spec, "failed": one_line(exc)}

    def in_flight_prepares(self) -> set[str]:
        return {p.prepare for p in self.flying.values() if p.prepare}

    def keep(self, prepares: set[str]) -> None:
        """Drop the references to preparations no point needs any more (Ray frees them)."""
        for key in [k for k in self.prepared if k not in prepares | self.in_flight_prepares()]:
            del self.prepared[key]

    def close(self) -> None:
        self.prepared.clear()
        self.flying.clear()
        self.shared = None
        if self.started:
            self.ray.shutdown()
