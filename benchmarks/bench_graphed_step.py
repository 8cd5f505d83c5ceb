"""Training-step throughput with and without CUDA graphs (issue: measure; `igeom run network --cuda-graphs`).

Run: .venv/bin/python benchmarks/bench_graphed_step.py [--width 32] [--batch 128] [--steps 300]

ResNet-20 on 28 x 28 one-channel inputs (the Fashion-MNIST runs of docs/measure.md), SGD with momentum and weight
decay. Times the same number of steps of the eager loop (baseline) and of the graph-replayed loop in the same
process, alternating three rounds each, and prints the median ratio. CUDA only: on a CPU the graphs are not used.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from implicit_geometry.models.networks import build
from implicit_geometry.train.graphed_step import GraphedStep


def steps_per_second(graphs: str, width: int, batch: int, steps: int, device: torch.device) -> float:
    torch.manual_seed(0)
    model = build("resnet20", in_shape=(1, 28, 28), num_classes=10, width=width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    step = GraphedStep(model, opt, torch.nn.functional.cross_entropy, graphs=graphs)
    x = torch.randn(steps + 10, batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (steps + 10, batch), device=device)
    for i in range(10):  # warm-up: cuDNN algorithm choice, the first eager step, the capture
        step(x[i], y[i])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(10, steps + 10):
        step(x[i], y[i])
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("CUDA graphs need a CUDA device: nothing to measure here")
        return
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    eager, graphed = [], []
    for _ in range(3):
        eager.append(steps_per_second("off", a.width, a.batch, a.steps, device))
        graphed.append(steps_per_second("cuda", a.width, a.batch, a.steps, device))
    print(f"{torch.cuda.get_device_name()}: ResNet-20 width {a.width}, batch {a.batch}, {a.steps} steps x 3 rounds")
    print(f"eager   {statistics.median(eager):8.1f} steps/s  (rounds: {', '.join(f'{v:.1f}' for v in eager)})")
    print(f"graphed {statistics.median(graphed):8.1f} steps/s  (rounds: {', '.join(f'{v:.1f}' for v in graphed)})")
    ratios = [g / e for g, e in zip(graphed, eager, strict=True)]
    print(f"ratio graphed/eager: median {statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
