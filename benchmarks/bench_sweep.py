"""Bars of the sweep/report issue, each measured in this run against a baseline from the same run.

1. A 200-point seli sweep (small sizes) completes on a local Dask cluster of 2 workers and on the default executor;
   killed half way and restarted it finishes without redoing finished points, and its table equals that of an
   uninterrupted sweep.
2. The default (local processes) executor's throughput is >= 1.7x one process running the points one after another
   (the baseline: ``--executor serial --batch 1``). The default executor gains from two things, each measured
   alone as well: points of equal shape run as one simulation (``--batch``), and batches run in 2 processes.
3. The report of that sweep opens in headless Chromium with zero console errors and every figure drawn.

Run: ``python benchmarks/bench_sweep.py [--points-scale 1.0]``. Timings are wall clock of the whole command
(start-up included) and depend on the load of the machine, which is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = {
    "lr": "0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1",
    "init_std": "0.02,0.05,0.1,0.2,0.3",
    "depth": "1,2",
    "dim": "3,4",
}
FIXED = {"steps": "200", "counts": "3:3:1", "records": "5", "device": "cpu"}


def sweep_cmd(out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "implicit_geometry.cli", "sweep", "seli", "--seeds", "2", "--quiet", "--out", str(out)]
    for k, v in GRID.items():
        cmd += ["--grid", f"{k}={v}"]
    for k, v in FIXED.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + list(extra)


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


_SPIN = "import time\nt=time.perf_counter()\nx=0\nfor i in range(N): x+=i*i\nprint(time.perf_counter()-t)"


def machine_parallelism(n: int = 15_000_000) -> float:
    """How much faster 2 processes finish 2 equal CPU-bound jobs than 1 process doing both, right now.

    On 2 idle cores this is about 2; on cores shared with other work it says what parallel speed-up the machine
    offers at the moment, the ceiling for any executor.
    """
    code = _SPIN.replace("N", str(n))
    t0 = time.perf_counter()
    for _ in range(2):
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL) for _ in range(2)]
    for p in procs:
        p.wait()
    return one / (time.perf_counter() - t0)


def done_points(folder: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in (folder / "points").glob("*/summary.json")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="Keep the sweep folders (printed).")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    ok = True
    load0 = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load0[0]:.1f} {load0[1]:.1f} {load0[2]:.1f}; sweep: 200 points x 2 seeds, seli {FIXED}")

    par0 = machine_parallelism()
    serial = timed(sweep_cmd(root / "serial", "--executor", "serial", "--batch", "1"))  # the baseline
    local = timed(sweep_cmd(root / "local", "--executor", "local", "--jobs", "2"))  # the default executor
    serial_batched = timed(sweep_cmd(root / "serial_batched", "--executor", "serial"))
    local_unbatched = timed(sweep_cmd(root / "local_unbatched", "--executor", "local", "--jobs", "2", "--batch", "1"))
    par1 = machine_parallelism()
    dask = timed(sweep_cmd(root / "dask", "--executor", "dask", "--jobs", "2"))
    ref = (root / "serial" / "table.csv").read_bytes()
    names = ("local", "serial_batched", "local_unbatched", "dask")
    same = {name: (root / name / "table.csv").read_bytes() == ref for name in names}
    n_done = {name: len(done_points(root / name)) for name in ("serial",) + names}
    bar1a = all(same.values()) and all(v == 200 for v in n_done.values())
    print(f"[{'PASS' if bar1a else 'FAIL'}] complete: serial {serial:.1f} s, local (2 processes, batched) {local:.1f} s, "
          f"local Dask cluster (2 workers, batched) {dask:.1f} s; points done {n_done}; tables equal to serial's, byte for byte: {same}")
    ok &= bar1a

    # kill the default executor half way (SIGTERM, as a scheduler or Ctrl-C would), then rerun the same command
    cmd = sweep_cmd(root / "killed", "--executor", "local", "--jobs", "2")
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while len(done_points(root / "killed")) < 100 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    before = done_points(root / "killed")
    restart = timed(cmd)
    after = done_points(root / "killed")
    redone = [k for k, v in before.items() if after.get(k) != v]
    same_killed = (root / "killed" / "table.csv").read_bytes() == ref
    bar1b = proc.returncode == 130 and not redone and len(after) == 200 and same_killed
    print(f"[{'PASS' if bar1b else 'FAIL'}] killed at {len(before)}/200 points (exit {proc.returncode}), restart finished the other "
          f"{200 - len(before)} in {restart:.1f} s, redone {len(redone)}, table equal to the uninterrupted one: {same_killed}")
    ok &= bar1b

    ratio = serial / local
    load1 = os.getloadavg()
    bar2 = ratio >= 1.7
    print(f"[{'PASS' if bar2 else 'FAIL'}] throughput: default local executor / one process running the points one after another "
          f"= {ratio:.2f}x (bar 1.7x). Parts: batching alone (serial, batched / serial) {serial / serial_batched:.2f}x, "
          f"2 processes alone (local --batch 1 / serial) {serial / local_unbatched:.2f}x, 2 processes on top of batching "
          f"{serial_batched / local:.2f}x. Load average {load0[0]:.1f} before, {load1[0]:.1f} after, on {os.cpu_count()} cores; "
          f"the machine's own 2-process speed-up on a pure CPU loop was {par0:.2f}x before and {par1:.2f}x after")
    ok &= bar2

    from implicit_geometry.report.browser import check_page, find_chromium
    from implicit_geometry.report.html import write_report

    if find_chromium() is None:
        print("[SKIP] report: no chromium installed (apt-get install chromium)")
    else:
        t0 = time.perf_counter()
        page = write_report(root / "local")
        shot = root / "report.png"
        result = check_page(page, shot)
        drawn = [p["drawn"] for p in result["plots"]]
        bar3 = result["loaded"] and result["rendered"] and not result["errors"] and drawn and all(d > 0 for d in drawn)
        print(f"[{'PASS' if bar3 else 'FAIL'}] report {page.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - t0:.1f} s: "
              f"{len(result['errors'])} console errors {result['errors'][:3]}, {len(drawn)} plots, marks drawn {drawn}, hover '{result['hover']}'")
        ok &= bool(bar3)
    if args.keep:
        print(f"sweep folders kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
