"""Experimental: per-seed depth runs with momentum plateau steps. Usage: python benchmarks/momentum_plateau_check.py DEPTHS METHOD BETA ETA BUDGET MAX_STEPS (env RESTART=0/1, MSTEP=step factor)."""
import sys, json, tempfile, time, torch
torch.set_num_threads(1)
from implicit_geometry.experiments.depth import DepthConfig, run_depth
import os, functools
from implicit_geometry.depth import stepping
_init = stepping.PathSimulator.__init__
def init(self, *a, **k):
    k.setdefault("restart", os.environ.get("RESTART", "1") == "1"); k.setdefault("momentum_step", float(os.environ.get("MSTEP", "1")))
    _init(self, *a, **k)
stepping.PathSimulator.__init__ = init
L = [int(x) for x in sys.argv[1].split(",")]
method = sys.argv[2]; beta = float(sys.argv[3]); eta = float(sys.argv[4]); budget = int(sys.argv[5]); ms = int(sys.argv[6])
cfg = DepthConfig(seeds=5, depths=L, device="cpu", plateau_method=method, momentum=beta, eta=eta, plateau_budget=budget, max_steps=ms)
t = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    s = run_depth(cfg, f"{tmp}/run", progress=False, figures=False)
print(f"== {sys.argv[1:]} wall {time.perf_counter()-t:.1f}s")
for r in s["runs"]:
    print(f"L={r['depth']} seed={r['seed']} term={r['terminal']} steps={r['steps']} er={r['effective_rank']:.3f} nr={r['numerical_rank']} "
          f"margin={r['min_margin']:.2f} pl={r['plateau_steps']} rs={r.get('restarts')} ang={r['max_angle_error_deg']}")
