"""A sweep as a grid of points: each point is a pure function of its spec and what every point
shares (model, calibration ids, reference log-probabilities), so the same point runs in this
process or as a Ray task (toolkit.sweep.distributed) and gives the same row.

`Ledger` keeps the results JSON, rewritten atomically after every point: a rerun with the same
settings skips the points already recorded (successes and recorded failures alike). `run_grid`
walks chains of points (one method and allocation at growing removals): a chain stops when a
point's result is hopeless, the rest recorded as skipped.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from device_bench.files import write_json

RunPoint = Callable[[dict, object, object], dict]  # (spec, shared, prepared) -> row
Prepare = Callable[[object, str], object]  # (shared, key) -> prepared (e.g. one method's factorizations)


@dataclass(frozen=True)
class Point:
    """One cell of the grid: `id` is stable across runs (e.g. "svd-llm/surgical/0.2")."""

    id: str
    index: int  # position in the planned table
    chain: str  # points of a chain run in order; a hopeless row skips the rest of its chain
    spec: dict = field(hash=False)
    prepare: str | None = None  # key of the shared preparation it needs, if any


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, short enough for a table cell."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Ledger:
    """The results JSON of a sweep: `header` fields plus `rows`, one per point id."""

    def __init__(self, path: Path, header: dict, key: tuple[str, ...], progress: Callable[[str], None]):
        self.path, self.header = Path(path), dict(header)
        self.rows: dict[str, dict] = {}
        self.recorded = 0  # rows recorded by this run
        if self.path.is_file():
            try:
                earlier = json.loads(self.path.read_text())
            except (OSError, ValueError):
                earlier = {}
            if all(earlier.get(k) == header.get(k) for k in key) and isinstance(earlier.get("rows"), list):
                self.rows = {row["id"]: row for row in earlier["rows"] if isinstance(row, dict) and "id" in row}
                for k, v in earlier.items():  # fields added while running (e.g. the runner) stay
                    self.header.setdefault(k, v)
            elif earlier:
                changed = [k for k in key if earlier.get(k) != header.get(k)]
                progress(f"{self.path} was made with other settings ({', '.join(changed)}): starting over")
        self.order: list[str] = list(self.rows)

    def get(self, point_id: str) -> dict | None:
        return self.rows.get(point_id)

    def record(self, point: Point, row: dict) -> None:
        """Keep `row` as the result of `point` and rewrite the JSON (temporary file, then rename)."""
        self.rows[point.id] = {"id": point.id, **row}
        self.recorded += 1
        self.write()

    def set_order(self, ids: list[str]) -> None:
        """Rows in this order (planned points first, then rows of earlier runs not planned now)."""
        self.order = ids + [i for i in self.rows if i not in ids]

    def result(self) -> dict:
        return {**self.header, "rows": [self.rows[i] for i in self.order if i in self.rows]}

    def write(self) -> None:
        write_json(self.result(), str(self.path))


class Executor(Protocol):
    """Runs points: `submit` queues one, `next_done` blocks until one finishes and returns it."""

    def submit(self, point: Point) -> None: ...

    def next_done(self) -> tuple[Point, dict]: ...

    def keep(self, prepares: set[str]) -> None: ...  # preparations still needed; drop the rest

    def close(self) -> None: ...


class LocalExecutor:
    """Points in this process, in planned order; one preparation held at a time (they are large)."""

    def __init__(self, shared: object, run: RunPoint, prepare: Prepare | None = None):
        self.shared, self.run, self.prepare = shared, run, prepare
        self.queue: list[Point] = []
        self.prepared: dict[str, object] = {}

    def submit(self, point: Point) -> None:
        self.queue.append(point)

    def next_done(self) -> tuple[Point, dict]:
        point = min(self.queue, key=lambda p: p.index)
        self.queue.remove(point)
        prepared = None
        if point.prepare is not None:
            if point.prepare not in self.prepared:
                self.prepared.clear()
                try:
                    self.prepared[point.prepare] = self.prepare(self.shared, point.prepare)
                except Exception as exc:  # noqa: BLE001 - recorded in the point, the sweep goes on
                    return point, {**point.spec, "failed": one_line(exc)}
            prepared = self.prepared[point.prepare]
        return point, self.run(point.spec, self.shared, prepared)

    def keep(self, prepares: set[str]) -> None:
        for key in [k for k in self.prepared if k not in prepares]:
            del self.prepared[key]

    def close(self) -> None:
        self.prepared.clear()


def run_grid(points: list[Point], ledger: Ledger, executor: Executor, hopeless: Callable[[dict], str | None],
             progress: Callable[[str], None], retry_failed: bool = False, describe: Callable[[dict], str] = str) -> dict:
    """Run every point not yet in `ledger` through `executor`, chain by chain; record each row as it
    arrives. `hopeless(row)` gives the reason to skip the rest of the row's chain, or None."""
    ledger.set_order([p.id for p in points])
    chains: dict[str, deque[Point]] = {}
    for point in sorted(points, key=lambda p: p.index):
        chains.setdefault(point.chain, deque()).append(point)
    flying: dict[str, Point] = {}

    def finished(point: Point) -> dict | None:
        row = ledger.get(point.id)
        return None if row is None or (retry_failed and "failed" in row) else row

    def stop(chain: deque[Point], reason: str) -> None:
        for rest in chain:
            if finished(rest) is None:
                ledger.record(rest, {**rest.spec, "skipped": reason})
        chain.clear()

    def advance(chain: deque[Point]) -> None:
        """Submit the chain's first unfinished point; skip the rest after a hopeless row."""
        while chain:
            point = chain.popleft()
            row = finished(point)
            if row is None:
                flying[point.id] = point
                executor.submit(point)
                return
            reason = hopeless(row)
            if reason:
                stop(chain, reason)

    todo = sum(finished(p) is None for p in points)
    progress(f"{len(points)} points" + (f", {len(points) - todo} already done in {ledger.path}"
                                        if todo < len(points) else ""))
    for chain in chains.values():
        advance(chain)
    began, done = time.time(), 0
    while flying:
        point, row = executor.next_done()
        flying.pop(point.id)
        done += 1
        ledger.record(point, row)
        reason = hopeless(row)
        if reason:
            stop(chains[point.chain], reason)
        else:
            advance(chains[point.chain])
        executor.keep({p.prepare for p in [*flying.values(), *(q for c in chains.values() for q in c)] if p.prepare})
        left = sum(finished(p) is None for p in points)
        eta = (time.time() - began) / done * left
        progress(f"[{len(points) - left}/{len(points)}] {point.id}: {describe(ledger.get(point.id))}"
                 + (f"; {left} points left, about {eta / 60:.0f} min at this pace" if left else ""))
    return ledger.result()
