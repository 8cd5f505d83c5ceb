"""Tiny run folders of every experiment (seconds each), for the report tests."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any


def seli(out: Path) -> dict[str, Any]:
    from implicit_geometry.experiments.seli import SeliConfig, run_seli

    return run_seli(SeliConfig(counts=[4, 4, 1], dim=4, steps=100, seeds=2, records=8, device="cpu"), out, progress=False)


def imbalance(out: Path) -> dict[str, Any]:
    from implicit_geometry.experiments.imbalance import ImbalanceConfig, run_imbalance

    config = ImbalanceConfig(classes=4, ratios=[1.0, 5.0], steps=150, seeds=2, records=6, device="cpu")
    return run_imbalance(config, out, progress=False)


def hadamard(out: Path) -> dict[str, Any]:
    from implicit_geometry.experiments.hadamard import HadamardConfig, run_hadamard

    config = HadamardConfig(classes=8, depths=[1, 2], rank_depths=[1, 3], basin_depths=[1, 2], basin_classes=[4, 8], ics=4,
                            horizon=100.0, points=12, exact_t=0.5, rtol=1e-6, device="cpu",
                            figures=False)  # matplotlib is most of the time of these tiny runs; seli, imbalance, depth keep theirs
    return run_hadamard(config, out, progress=False)


def depth(out: Path) -> dict[str, Any]:
    from implicit_geometry.experiments.depth import DepthConfig, run_depth

    config = DepthConfig(classes=4, samples_per_class=2, dims=[8], depths=[1, 3], init_std=0.1, seeds=2, max_steps=1500,
                         target_margin=5.0, records=10, device="cpu")
    return run_depth(config, out, progress=False)


def ntp(out: Path) -> dict[str, Any]:
    from implicit_geometry.experiments.ntp import NtpConfig, run_ntp

    config = NtpConfig(steps=20, bilinear_steps=100, bilinear_direction_steps=80, dim=16, layers=1, heads=2, synthetic_length=1000,
                       records=4, measure_contexts=40, device="cpu", batch_size=64)
    return run_ntp(config, out, progress=False, figures=False)


def network(out: Path) -> dict[str, Any]:
    from implicit_geometry.experiments.network import NetworkConfig, run_network

    config = NetworkConfig(dataset="digits", per_class=10, width=16, epochs=2, measure_every=1, seeds=2, batch_size=32,
                           permutations=2, device="cpu")
    return run_network(config, out, progress=False)


def head_depth(out: Path) -> dict[str, Any]:
    from implicit_geometry.experiments.head_depth import HeadDepthConfig, run_head_depth

    net = {"dataset": "digits", "per_class": 10, "epochs": 2, "batch_size": 32, "device": "cpu", "measure_every": 1}
    return run_head_depth(HeadDepthConfig(depths=[1, 2], widths=[8], network=net), out, progress=False)


CASES: dict[str, Callable[[Path], dict[str, Any]]] = {"seli": seli, "imbalance": imbalance, "hadamard": hadamard, "depth": depth, "ntp": ntp}
# The real-network experiments (another branch): covered where they are installed, with scikit-learn's digits.
if importlib.util.find_spec("implicit_geometry.experiments.network") is not None and importlib.util.find_spec("sklearn") is not None:
    CASES.update({"network": network, "head-depth": head_depth})
