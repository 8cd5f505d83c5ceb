"""Run the points of a sweep on an executor, resumably, and collect their summaries into one table.

Sweep folder layout::

    sweep.json          the spec and its points (id, swept params)
    points/<id>/        one run folder per point (the experiment's own layout) + error.json when it failed
    table.csv           one row per (point, seed): config columns, seed, status, error, scalar results
    table.parquet       the same table, when pyarrow is installed
    timings.csv         wall seconds per finished point (kept out of the table, which is deterministic)

A point is finished when its folder holds ``summary.json`` and neither ``checkpoint.pt`` nor ``error.json``;
rerunning skips finished points, resumes checkpointed ones and reruns failed or half-written ones.

Batches: where the experiment allows it (``Sweepable.run_batch``), points of equal ``batch_key`` (equal tensor
shapes) run as one simulation, up to ``batch`` points each. Batches are cut from the whole spec in its order,
never from what is left to do, so a point always runs beside the same points and its numbers are the same
whichever executor ran it and however often the sweep was interrupted (a batch that holds finished points
simulates them again but writes only the others). A batch that fails falls back to running its points one by
one, so a failing point is recorded with its own error and the others finish.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from implicit_geometry._validation import InvalidParameterError, check_choice, check_int, one_line
from implicit_geometry.experiments.base import Interrupted
from implicit_geometry.io import read_json, write_json
from implicit_geometry.sweep.spec import Point, SweepSpec, point_id

EXECUTORS = ("local", "serial", "dask")


class SweepInterrupted(Interrupted):
    """The sweep stopped on SIGINT/SIGTERM; rerunning the same command continues it (the CLI exits 130)."""

    def __init__(self, folder: Path, done: int, total: int) -> None:
        Exception.__init__(self, f"sweep interrupted with {done} of {total} points done; rerun the same command (or --out {folder}) to continue")
        self.folder = folder
        self.step = done


def point_status(folder: Path) -> str:
    """``done``, ``failed``, ``partial`` (checkpoint to resume) or ``pending``."""
    if (folder / "error.json").exists():
        return "failed"
    if (folder / "checkpoint.pt").exists():
        return "partial"
    if (folder / "summary.json").exists():
        return "done"
    return "pending"


def _set_threads(threads: int) -> None:
    """One thread per point (points run side by side, and results do not depend on a thread count): torch's and
    NumPy's BLAS (the deep UFM's products go through it on CPU, ``implicit_geometry._matmul``), which would otherwise
    start a thread per core in every worker."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")


def run_points(experiment: str, items: list[tuple[dict[str, Any], str, bool]], threads: int = 1, figures: bool = False) -> list[dict[str, Any]]:
    """Run one batch of points ``(config, folder, write)`` (in a worker): one simulation where the experiment
    allows it; never raises for failing points. Points with ``write=False`` are simulated (to keep the batch's
    composition) but not written: their result is ``{"status": "skipped"}``."""
    from implicit_geometry.sweep.contract import load_sweepable

    def one_by_one() -> list[dict[str, Any]]:
        return [run_point(experiment, config, folder, threads, figures) if write else {"status": "skipped"} for config, folder, write in items]

    sweep = load_sweepable(experiment)
    resumable = any(write and point_status(Path(folder)) == "partial" for _, folder, write in items)
    if sweep.run_batch is None or len(items) == 1 or resumable:  # a checkpointed point resumes on its own
        return one_by_one()
    _set_threads(threads)
    t0 = time.perf_counter()
    try:
        configs = [sweep.config.from_dict(config) for config, _, _ in items]
        outs: list[Path | None] = []
        for _, folder, write in items:
            if write and Path(folder).exists():
                shutil.rmtree(folder)
            outs.append(Path(folder) if write else None)
        sweep.run_batch(configs, outs, progress=False, **sweep.run_kwargs(figures))
    except Interrupted:
        if _POOL_WORKER:
            os._exit(130)
        return [{"status": "interrupted"} for _ in items]
    except Exception:  # one bad point must not fail the others: run each alone, recording its own error
        return one_by_one()
    seconds = (time.perf_counter() - t0) / max(1, sum(write for _, _, write in items))
    return [{"status": "done", "seconds": seconds} if write else {"status": "skipped"} for _, _, write in items]


def plan_batches(experiment: str, points: list[Point], batch: int) -> list[list[Point]]:
    """The points grouped into batches that run as one simulation each: equal ``batch_key``, spec order, at most
    ``batch`` points, a group cut into nearly equal batches. One point per batch when the experiment has no
    ``run_batch`` (or ``batch == 1``). Depends only on the spec, never on what is finished or on the executor.
    """
    from implicit_geometry.sweep.contract import load_sweepable

    sweep = load_sweepable(experiment)
    if sweep.run_batch is None or sweep.batch_key is None or batch <= 1:
        return [[p] for p in points]
    groups: dict[Any, list[Point]] = {}
    for p in points:
        try:
            key = sweep.batch_key(sweep.config.from_dict(p.config))
        except Exception:  # an invalid point runs alone and fails with its own message
            key = ("invalid point", p.id)
        groups.setdefault(key, []).append(p)
    batches = []
    for members in groups.values():
        n = -(-len(members) // batch)  # ceil
        size = -(-len(members) // n)
        batches.extend(members[i : i + size] for i in range(0, len(members), size))
    return batches


def run_point(experiment: str, config: dict[str, Any], folder: str, threads: int = 1, figures: bool = False) -> dict[str, Any]:
    """Run one point into ``folder`` (in a worker); never raises for a failing point: returns its status.

    A checkpointed folder is resumed; anything else unfinished is cleared and rerun from scratch.
    """
    from implicit_geometry.experiments.base import Interrupted
    from implicit_geometry.sweep.contract import load_sweepable

    _set_threads(threads)
    path = Path(folder)
    t0 = time.perf_counter()
    try:
        sweep = load_sweepable(experiment)
        if point_status(path) == "partial" and (path / "config.json").exists():
            sweep.run(None, None, resume=path, progress=False, **sweep.run_kwargs(figures))
        else:
            if path.exists():
                shutil.rmtree(path)
            sweep.run(sweep.config.from_dict(config), path, progress=False, **sweep.run_kwargs(figures))
        return {"status": "done", "seconds": time.perf_counter() - t0}
    except Interrupted:
        if _POOL_WORKER:  # the sweep is shutting down (its point saved a checkpoint): take no further point
            os._exit(130)
        return {"status": "interrupted", "seconds": time.perf_counter() - t0}
    except Exception as exc:  # one failing point must not stop the sweep: record it
        error = f"{type(exc).__name__}: {exc}"
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "error.json", {"error": error, "traceback": traceback.format_exc()})
        return {"status": "failed", "error": error, "seconds": time.perf_counter() - t0}


_POOL_WORKER = False


def _worker_init() -> None:
    global _POOL_WORKER
    _POOL_WORKER = True
    import threading

    parent = os.getppid()

    def watch() -> None:  # a sweep killed with SIGKILL leaves no orphan worker running points behind
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


Task = list[tuple[Point, Path, bool]]  # one batch: (point, folder, write it)


def _items(task: Task) -> list[tuple[dict[str, Any], str, bool]]:
    return [(p.config, str(f), w) for p, f, w in task]


def _results(task: Task, results: list[dict[str, Any]]) -> Iterator[tuple[Point, dict[str, Any]]]:
    for (point, _, write), result in zip(task, results):
        if write:
            yield point, result


def _serial(experiment: str, tasks: list[Task], jobs: int, scheduler: str | None, figures: bool) -> Iterator[tuple[Point, dict[str, Any]]]:
    for task in tasks:
        results = run_points(experiment, _items(task), 1, figures)
        if any(r["status"] == "interrupted" for r in results):  # the run caught SIGINT/SIGTERM itself: stop the sweep
            raise KeyboardInterrupt
        yield from _results(task, results)


def _local(experiment: str, tasks: list[Task], jobs: int, scheduler: str | None, figures: bool) -> Iterator[tuple[Point, dict[str, Any]]]:
    if not tasks:
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # Workers must start clean (no inherited torch thread pools or signal handlers): forkserver where there is one,
    # its server importing torch and the experiment once for all workers (an import per spawned worker costs
    # seconds), else spawn.
    if "forkserver" in mp.get_all_start_methods():
        from implicit_geometry.sweep.contract import load_sweepable

        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["torch", "implicit_geometry.sweep.runner", load_sweepable(experiment).run.__module__])
    else:
        context = mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_init)
    futures = {pool.submit(run_points, experiment, _items(task), 1, figures): task for task in tasks}
    try:
        for fut in as_completed(futures):
            try:
                results = fut.result()
            except BrokenProcessPool:  # a worker was killed from outside: stop like on SIGTERM
                raise KeyboardInterrupt from None
            yield from _results(futures[fut], results)
    except BaseException:
        procs = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        # SIGTERM lets a point that checkpoints save its state; the rest is lost (at most the points in flight).
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join()
        raise
    pool.shutdown(wait=True)


SCHEDULER_TIMEOUT = 30  # seconds to wait for a Dask scheduler to answer


def _dask(experiment: str, tasks: list[Task], jobs: int, scheduler: str | None, figures: bool) -> Iterator[tuple[Point, dict[str, Any]]]:
    if not tasks:
        return
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise InvalidParameterError("executor must be local or serial without Dask (got 'dask': pip install 'implicit-geometry[dask]')") from None
    import logging

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
        # no scheduler there or no address (OSError, ValueError, TimeoutError), or Dask's own event-loop thread not
        # starting in its 10 s on a loaded machine (a bare AssertionError): one line, not 80
        except Exception as exc:
            raise InvalidParameterError(
                f"could not connect to the dask scheduler {scheduler}: {one_line(exc, 160) or type(exc).__name__} "
                "(--scheduler must be the address of a running Dask scheduler, such as tcp://host:8786)"
            ) from None
    else:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.CRITICAL, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        client = Client(cluster)
    try:
        futures = [
            client.submit(run_points, experiment, [(p.config, str(f.resolve()), w) for p, f, w in task], 1, figures,
                          key=f"igeom-{experiment}-{task[0][0].id}-{len(task)}", pure=False)
            for task in tasks
        ]
        by_key = {fut.key: task for fut, task in zip(futures, tasks)}
        try:
            for fut in as_completed(futures):
                task = by_key[fut.key]
                try:
                    results = fut.result()
                except Exception as exc:  # a worker died under the batch
                    results = [{"status": "failed", "error": f"{type(exc).__name__}: {exc}"} for _ in task]
                yield from _results(task, results)
        except BaseException:
            client.cancel(futures)
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


_EXECUTORS: dict[str, Callable[..., Iterator[tuple[Point, dict[str, Any]]]]] = {"serial": _serial, "local": _local, "dask": _dask}


@dataclass
class SweepResult:
    folder: Path
    total: int
    done: int
    failed: int
    table: Path
    errors: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "total": self.total, "done": self.done, "failed": self.failed,
                "table": str(self.table), "errors": self.errors}


def default_sweep_out(spec: SweepSpec) -> Path:
    """A folder named by the spec, so that rerunning the same command continues the same sweep."""
    return Path("runs") / f"sweep-{spec.experiment}-{point_id(spec.experiment, spec.to_dict())[:8]}"


def run_sweep(
    spec: SweepSpec,
    out: Path | str | None = None,
    *,
    executor: str = "local",
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    figures: bool = False,
    batch: int = 32,
) -> SweepResult:
    """Run every unfinished point of ``spec`` into ``out`` and write the table; returns the counts.

    ``batch``: at most this many points of equal shape run as one simulation where the experiment allows it
    (see :func:`plan_batches`; 1 runs every point on its own).

    Raises :class:`SweepInterrupted` on SIGINT/SIGTERM after writing the table of what is finished.
    """
    from implicit_geometry.sweep.table import write_table

    check_choice("executor", executor, EXECUTORS)
    batch = check_int("batch", batch, minimum=1)
    jobs = check_int("jobs", jobs if jobs is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1), minimum=1)
    if scheduler and executor != "dask":
        raise InvalidParameterError(f"scheduler must be given only with executor dask (got executor {executor!r})")
    points = spec.points()
    spec = spec.normalized()
    folder = Path(out) if out is not None else default_sweep_out(spec)
    if folder.exists() and any(folder.iterdir()) and not (folder / "sweep.json").exists():
        raise InvalidParameterError(f"--out must be a new folder or a sweep folder (got {str(folder)!r}, which holds other files)")
    folder.mkdir(parents=True, exist_ok=True)
    # Points are named by their config, so a changed spec reuses every point it shares with the old one.
    write_json(folder / "sweep.json", {**spec.to_dict(), "points": [{"id": p.id, "params": p.params} for p in points]})
    point_dir = folder / "points"
    statuses = {p.id: point_status(point_dir / p.id) for p in points}
    todo: list[Task] = [
        [(p, point_dir / p.id, statuses[p.id] != "done") for p in members]
        for members in plan_batches(spec.experiment, points, batch)
        if any(statuses[p.id] != "done" for p in members)
    ]
    done = sum(s == "done" for s in statuses.values())
    failed = 0
    errors: dict[str, str] = {}
    timings_path = folder / "timings.csv"
    timings = _read_timings(timings_path)
    bar = _bar(len(points), done, progress)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    in_main = _in_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, on_term)
    try:
        for point, result in _EXECUTORS[executor](spec.experiment, todo, jobs, scheduler, figures):
            if result["status"] == "done":
                done += 1
                timings[point.id] = result.get("seconds", 0.0)
            elif result["status"] == "failed":
                failed += 1
                errors[point.id] = result.get("error", "")
            bar.set_postfix_str(f"done {done}, failed {failed}, remaining {len(points) - done - failed}", refresh=False)
            bar.update(1)
    except KeyboardInterrupt:
        bar.close()
        write_table(folder, spec, points)
        _write_timings(timings_path, timings)
        raise SweepInterrupted(folder, done, len(points)) from None
    except Exception:  # the executor failed to start (no Dask scheduler there): clear the bar, leave the error alone on its line
        bar.leave = False
        bar.close()
        raise
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    bar.close()
    table = write_table(folder, spec, points)
    _write_timings(timings_path, timings)
    return SweepResult(folder=folder, total=len(points), done=done, failed=failed, table=table, errors=errors)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, desc="sweep", disable=not enabled, file=sys.stderr, unit="point", smoothing=0.1, mininterval=0.5)
    bar.set_postfix_str(f"done {initial}, failed 0, remaining {total - initial}")
    return bar


def _read_timings(path: Path) -> dict[str, float]:
    from implicit_geometry.io import read_csv

    if not path.exists():
        return {}
    return {r["point"]: float(r["seconds"]) for r in read_csv(path)}


def _write_timings(path: Path, timings: dict[str, float]) -> None:
    from implicit_geometry.io import write_csv

    write_csv(path, [{"point": k, "seconds": round(v, 4)} for k, v in timings.items()])


def load_sweep(folder: Path | str) -> tuple[SweepSpec, list[dict[str, Any]]]:
    """The spec and point list of a sweep folder."""
    folder = Path(folder)
    if not (folder / "sweep.json").exists():
        raise InvalidParameterError(f"folder must be a sweep folder with sweep.json (got {str(folder)!r})")
    d = read_json(folder / "sweep.json")
    spec = SweepSpec(d["experiment"], grid=d.get("grid", {}), fixed=d.get("fixed", {}), seeds=d.get("seeds", 1), first_seed=d.get("first_seed", 0))
    return spec, d.get("points", [])
