"""Bars of the measurement issue, each with a baseline measured in the same run.

1. Accuracy: accumulated statistics equal the full-batch ones to 1e-10 for random batch splits, shard splits
   (checked here; 2 gloo processes are checked in tests/test_measure.py).
2. Throughput at K = 1000 classes, D = 512 on CPU: rows/s of the one-pass ClassStats against
   (a) a straightforward two-pass implementation (class means class by class, then the within-class scatter
   class by class) and (b) a vectorized two-pass one (index_add means, then one residual product per batch).
   Both baselines must stream the rows twice. Memory: the accumulator's state size for two stream lengths.
3. (Optional, --network) the Fashion-MNIST terminal-phase run on all 60k rows (NETWORK_RECIPES): PASS when the
   training error reaches zero and NC1 then falls >= 10x; prints the wall time. Hours on a shared CPU: it runs
   in ``--network-out`` and an interrupted run resumes with the same command; ``--network-folder F`` judges
   (or resumes) an existing run folder.

Run: ``OMP_NUM_THREADS=2 python benchmarks/bench_measure.py [--rows 20000] [--network]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from implicit_geometry.measure.accumulators import ClassStats


def stream(X: torch.Tensor, y: torch.Tensor, batch: int):
    for i in range(0, X.shape[0], batch):
        yield X[i : i + batch], y[i : i + batch]


def one_pass(X, y, K, batch):
    acc = ClassStats(X.shape[1], K)
    for h, lab in stream(X, y, batch):
        acc.update(h, lab)
    c = acc.compute()
    return c["means"], c["within_scatter"]


def two_pass_straightforward(X, y, K, batch):
    D = X.shape[1]
    sums = torch.zeros(K, D, dtype=torch.float64)
    counts = torch.zeros(K, dtype=torch.float64)
    for h, lab in stream(X, y, batch):  # pass 1: class means, class by class
        h = h.double()
        for c in torch.unique(lab).tolist():
            m = lab == c
            sums[c] += h[m].sum(0)
            counts[c] += m.sum()
    means = sums / counts[:, None]
    Sw = torch.zeros(D, D, dtype=torch.float64)
    for h, lab in stream(X, y, batch):  # pass 2: within-class scatter, class by class
        h = h.double()
        for c in torch.unique(lab).tolist():
            R = h[lab == c] - means[c]
            Sw += R.T @ R
    return means, Sw


def two_pass_vectorized(X, y, K, batch):
    D = X.shape[1]
    sums = torch.zeros(K, D, dtype=torch.float64)
    counts = torch.zeros(K, dtype=torch.float64)
    for h, lab in stream(X, y, batch):
        sums.index_add_(0, lab, h.double())
        counts += torch.bincount(lab, minlength=K).double()
    means = sums / counts[:, None]
    Sw = torch.zeros(D, D, dtype=torch.float64)
    for h, lab in stream(X, y, batch):
        R = h.double() - means[lab]
        Sw += R.T @ R
    return means, Sw


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def accuracy_bar(seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    N, D, K = 5000, 64, 50
    y = rng.integers(0, K, N)
    H = 100 + rng.normal(size=(K, D))[y] * 3 + rng.normal(size=(N, D))
    means = np.stack([H[y == c].mean(0) for c in range(K)])
    R = H - means[y]
    want = R.T @ R
    worst = 0.0
    for trial in range(5):
        cuts = np.sort(rng.choice(np.arange(1, N), size=rng.integers(1, 200), replace=False))
        shards = []
        for i, j in zip([0, *cuts], [*cuts, N]):
            shards.append(ClassStats(D, K).update(torch.tensor(H[i:j]), torch.tensor(y[i:j])))
        acc = shards[0]
        for s in shards[1:]:
            acc.merge(s) if trial % 2 else None
        if trial % 2 == 0:  # batch split into one accumulator
            acc = ClassStats(D, K)
            for i, j in zip([0, *cuts], [*cuts, N]):
                acc.update(torch.tensor(H[i:j]), torch.tensor(y[i:j]))
        c = acc.compute()
        worst = max(worst, float(np.abs(c["within_scatter"].numpy() - want).max() / np.abs(want).max()),
                    float(np.abs(c["means"].numpy() - means).max() / np.abs(means).max()))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--network", action="store_true", help="also run the Fashion-MNIST (60k) network bar (long; resumable)")
    ap.add_argument("--network-out", default="runs/bench-network-60k", help="run folder of the --network bar (resumed if interrupted)")
    ap.add_argument("--network-folder", default=None, help="only judge this finished (or resume this interrupted) network run")
    ap.add_argument("--network-recipe", choices=sorted(NETWORK_RECIPES), default=None, help="gpu (ResNet-20) or cpu (MLP); default: gpu when CUDA is present")
    a = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    err = accuracy_bar()
    print(f"[bar 1] max relative error, batch/shard splits vs full batch (float64, offset 100): {err:.2e}  ->  {'PASS' if err <= 1e-10 else 'FAIL'} (bar 1e-10)")

    g = torch.Generator().manual_seed(0)
    K, D, N = a.classes, a.dim, a.rows
    y = torch.randint(0, K, (N,), generator=g)
    X = (torch.randn(K, D, generator=g)[y] * 2 + torch.randn(N, D, generator=g)).float()  # float32 rows, as from a network
    (m1, S1), t1 = timed(one_pass, X, y, K, a.batch)
    (m2, S2), t2 = timed(two_pass_straightforward, X, y, K, a.batch)
    (m3, S3), t3 = timed(two_pass_vectorized, X, y, K, a.batch)
    agree = max(float((S1 - S2).abs().max() / S2.abs().max()), float((S1 - S3).abs().max() / S3.abs().max()))
    print(f"[bar 2] K={K} D={D} N={N} batch={a.batch}: one-pass {N / t1:,.0f} rows/s; straightforward two-pass {N / t2:,.0f} rows/s; "
          f"vectorized two-pass {N / t3:,.0f} rows/s (results agree to {agree:.1e})")
    print(f"        ratio vs straightforward two-pass: {t2 / t1:.1f}x  ->  {'PASS' if t2 / t1 >= 5 else 'FAIL'} (bar 5x)")
    print(f"        ratio vs vectorized two-pass: {t3 / t1:.2f}x (for reference: a vectorized baseline costs the same products twice)")
    sizes = []
    for n in (N // 10, N):
        acc = ClassStats(D, K)
        for h, lab in stream(X[:n], y[:n], a.batch):
            acc.update(h, lab)
        sizes.append(sum(v.numel() * v.element_size() for v in acc.state_dict().values()))
    print(f"        accumulator state: {sizes[0] / 2**20:.2f} MiB after {N // 10} rows, {sizes[1] / 2**20:.2f} MiB after {N} rows "
          f"-> {'PASS' if sizes[0] == sizes[1] else 'FAIL'} (independent of rows)")
    if a.network or a.network_folder:
        network_bar(a.network_folder, a.network_out, a.network_recipe)


# The full-60k recipe of the terminal-phase bar (docs/measure.md): an MLP with a 3-layer ReLU head of width 512,
# SGD (momentum 0.9, weight decay 5e-4), batch 128, lr 0.05 for 10 epochs (a short noisy phase), 0.005 to epoch 80
# (memorization), 0.0005 to epoch 120 (the last hard rows), geometry measured every epoch (one eval pass, 60k rows).
_FMNIST_60K = ["--dataset", "fashion-mnist", "--per-class", "0", "--batch-size", "128", "--lr", "0.05", "--weight-decay", "5e-4",
               "--measure-every", "1", "--permutations", "10"]
# The best measured recipe of each kind (docs/measure.md has the numbers): "gpu" is ResNet-20 (width 32), lr 0.05 /10 at
# epoch 24, 110 epochs (H100: about 5 s per epoch; zero error at epoch 29, NC1 down 5.0x by epoch 87, then a loss spike);
# "cpu" is the batch-normalized MLP 512 x 3, no weight decay on its normalized weights and 2e-3 on the rest, lr 0.05 /10 at
# epochs 10, 950 and 1500, 1600 epochs, measured every 2 (2 CPU cores: about 4.3 s per epoch, 2 hours; session 8).
# Default: gpu when CUDA is present.
NETWORK_RECIPES = {
    "gpu": _FMNIST_60K + ["--model", "resnet20", "--width", "32", "--epochs", "110", "--lr-drops", "0.22"],
    "cpu": _FMNIST_60K + ["--model", "mlp", "--width", "512", "--depth", "3", "--batch-norm", "--weight-decay", "2e-3",
                          "--weight-decay-normalized", "0", "--epochs", "1600", "--lr-drops", "0.00626,0.5938,0.9376",  # epochs 10, 950, 1500
                          "--measure-every", "2"],  # the later --weight-decay and --measure-every win
}


def network_bar(folder: str | None, out: str, recipe: str | None = None) -> bool:
    """Bar 3: run (or resume, or read back) the full-60k ``network`` recipe and print PASS/FAIL with its wall time."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from implicit_geometry.experiments.network import NC1_BAR_FACTOR

    import torch

    recipe = recipe or ("gpu" if torch.cuda.is_available() else "cpu")
    run = Path(folder or out)
    if not (run / "summary.json").exists():
        base = [sys.executable, "-m", "implicit_geometry.cli", "run", "network", "--quiet"]
        cmd = base + (["--resume", str(run)] if (run / "checkpoint.pt").exists() else NETWORK_RECIPES[recipe] + ["--out", str(run)])
        print("[bar 3] " + " ".join(["igeom", *cmd[3:]]), flush=True)
        t = time.perf_counter()
        rc = subprocess.run(cmd, check=False, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}).returncode
        print(f"        exit status {rc}, {time.perf_counter() - t:.0f} s in this call (interrupted runs resume with the same command)")
        if rc != 0 or not (run / "summary.json").exists():
            print("        -> FAIL (no finished run)")
            return False
    s = json.loads((run / "summary.json").read_text())
    ok = bool(s.get("terminal_phase_bar"))
    zero = s.get("first_zero_error_epoch")
    print(f"[bar 3] {s['model']} on {s['dataset']} N = {s['N']}, {s['epochs']} epochs, wall time {s['seconds']:.0f} s (training + measurement)")
    if zero is None:
        print("        training error never reached zero at a measured epoch")
    else:
        print(f"        first zero training error at epoch {zero} ({s['seconds_to_first_zero_error']:.0f} s); NC1 there "
              f"{s['nc1_at_first_zero_error']:.4g}, at the end {s['nc1_final']:.4g}: fell {s['nc1_reduction_since_zero_error']:.2f}x")
        if s.get("nc1_lowest_since_zero_error"):  # summaries written before session 5 lack it
            print(f"        lowest NC1 since: {s['nc1_lowest_since_zero_error']:.4g} at epoch {s['nc1_lowest_epoch']} "
                  f"({s['nc1_at_first_zero_error'] / s['nc1_lowest_since_zero_error']:.2f}x; the bar is judged at the end)")
    print(f"        -> {'PASS' if ok else 'FAIL'} (bar: zero training error on the full 60k, then NC1 down >= {NC1_BAR_FACTOR:g}x)")
    return ok

if __name__ == "__main__":
    main()
