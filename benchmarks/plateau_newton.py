"""Why the plateau's backward-Euler steps stay short on the rank-1 saddle at large depth (issue 5; docs/depth.md,
"Why Newton fails beyond dt ~ 1 on the saddle").

A run of the depth experiment's kind (K = 10, n = 5, std 0.03; width ``--dim``, depth ``--depth``) is brought onto
the rank-1 saddle by the explicit path rule, then integrated by backward-Euler steps of flow time at most 1 up to
``--flow``. At that state it prints:

1. which backward-Euler steps converge, for dt = 1/4 .. 64;
2. Newton's iterations at ``--dt`` (:func:`~implicit_geometry.depth.stepping.backward_euler_step` with ``trace``):
   the proximal gradient's norm per iteration, the curvature where CG stopped, the accepted step length;
3. with ``--dense`` (at most 6000 parameters), the dense Hessian at the state and at Newton's first iterate: its
   lowest eigenvalues, the fraction of their eigenvectors inside the tangent space of the factors' gauge orbits
   (``F_l -> A F_l``, ``F_{l+1} -> F_{l+1} A^{-1}``, which leave the logits unchanged), and the lowest eigenvalue on
   that space's orthogonal complement. Gradient flow never moves along these orbits (the gradient is orthogonal to
   them), but the Hessian is not zero there: its quadratic form along an orbit is minus the gradient times the
   orbit's curvature, so it grows with the gradient.

    OMP_NUM_THREADS=2 python benchmarks/plateau_newton.py --dim 20 --depth 10 --seed 0 --dense      # ~3 min
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from implicit_geometry.depth.curvature import flatten, unflatten
from implicit_geometry.depth.stepping import PathSimulator, backward_euler_step
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train.losses import CrossEntropy

K, N_PER, STD = 10, 5, 0.03


def saddle_state(dim: int, depth: int, seed: int, flow: float, loss) -> DeepUFM:
    m = DeepUFM.random(num_classes=K, num_samples=K * N_PER, dim=dim, depth=depth, batch=1, init_std=STD, seeds=[seed])
    sim = PathSimulator(m, loss, eta=0.01, plateau=False)
    with torch.no_grad():
        sim.run(300)  # the explicit rule reaches the saddle and cannot leave it
    m, t, h = sim.model, 0.0, 1.0
    while t < flow:
        new, _ = backward_euler_step(m, loss, h)
        if new is None:
            h /= 2
            continue
        m, t, h = new, t + h, min(1.0, 2 * h)
    return m


def gauge_basis(factors: list[torch.Tensor]) -> torch.Tensor:
    """Orthonormal basis (P x rank) of the tangent space of the gauge orbits at the factors (each B = 1): for every
    pair of adjacent factors and every generator X, the motion ``dF_l = X F_l``, ``dF_{l+1} = -F_{l+1} X``."""
    mats = [F[0] for F in factors]
    sizes = [M.numel() for M in mats]
    offsets = np.cumsum([0] + sizes)
    blocks = []
    for l in range(len(mats) - 1):
        low, high = mats[l], mats[l + 1]
        r = low.shape[0]
        block = torch.zeros(offsets[-1], r * r, dtype=low.dtype)
        eye = torch.eye(r, dtype=low.dtype)
        block[offsets[l]:offsets[l + 1]] = torch.kron(eye, low.T.contiguous())  # d(X F_l)/dX, both row-major
        block[offsets[l + 1]:offsets[l + 2]] = -torch.kron(high, eye)  # d(-F_{l+1} X)/dX
        blocks.append(block)
    U, s, _ = torch.linalg.svd(torch.cat(blocks, dim=1), full_matrices=False)
    return U[:, : int((s > 1e-10 * s[0]).sum())]


def dense_report(name: str, theta: torch.Tensor, like, loss) -> None:
    t0 = time.perf_counter()
    theta = theta[0].detach()

    def total_loss(flat):
        return torch.exp(loss.log_loss(DeepUFM(unflatten(flat[None], like)).logits()))[0]

    hess = torch.autograd.functional.hessian(total_loss, theta)
    flat = theta.clone().requires_grad_()
    grad = torch.autograd.grad(total_loss(flat), flat)[0]
    lam, vec = torch.linalg.eigh(hess)
    Q = gauge_basis(unflatten(theta[None], like))
    inside = (Q.T @ vec[:, :6]).pow(2).sum(0)
    comp_vals, comp_vecs = torch.linalg.eigh(Q @ Q.T)
    C = comp_vecs[:, comp_vals < 0.5]
    low_c = torch.linalg.eigvalsh(C.T @ hess @ C)[:3]
    print(f"  {name}: |grad| {float(grad.norm()):.3e}; lowest eigenvalues "
          + ", ".join(f"{float(v):.4g} ({float(f):.0%} gauge)" for v, f in zip(lam[:6], inside))
          + f"; largest {float(lam[-1]):.3e}; gauge space {Q.shape[1]} of {theta.numel()} dims (a random direction: "
          f"{Q.shape[1] / theta.numel():.0%} gauge); "
          f"lowest on its complement {', '.join(f'{float(v):.4g}' for v in low_c)}  [{time.perf_counter() - t0:.0f} s]",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=20)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flow", type=float, default=10.0, help="flow time on the saddle before the probe")
    ap.add_argument("--dt", type=float, default=2.0, help="the step whose Newton iterations are traced")
    ap.add_argument("--newton", type=int, default=8, help="Newton iterations to trace")
    ap.add_argument("--dense", action="store_true", help="dense Hessian analysis (at most 6000 parameters)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    labels = np.repeat(np.arange(K), N_PER)
    loss = CrossEntropy(labels, K)
    m = saddle_state(a.dim, a.depth, a.seed, a.flow, loss)
    s = torch.linalg.svdvals(m.logits()[0])
    print(f"d={a.dim} L={a.depth} seed {a.seed}, flow time {a.flow:g} on the saddle: logit singular values "
          f"{float(s[0]):.3e}, {float(s[1]):.3e}; |theta| {float(m.squared_norm()[0]) ** 0.5:.3f}", flush=True)
    print("backward-Euler steps from this state: " + ", ".join(
        f"dt {dt:g} {'ok' if backward_euler_step(m, loss, dt, max_newton=40)[0] is not None else 'FAILS'}"
        for dt in (0.25, 0.5, 1, 2, 4, 16, 64)), flush=True)
    trace: list = []
    backward_euler_step(m, loss, a.dt, max_newton=a.newton, trace=trace)
    base = flatten(m.factors)
    print(f"Newton at dt {a.dt:g}:")
    for i, e in enumerate(trace):
        Z = DeepUFM(unflatten(e["theta"], m.factors)).logits()[0]
        curv = "none" if e["curvature"] is None else f"{e['curvature']:.4g}"
        print(f"  iteration {i}: |proximal gradient| {e['residual']:.3e} before the step; CG {e['cg']}, negative "
              f"curvature met {curv}; step length {e['alpha']:.3g}; moved {float((e['theta'] - base).norm()):.4f}; "
              f"sigma_1 {float(torch.linalg.svdvals(Z)[0]):.4e}", flush=True)
    if a.dense:
        if base.shape[1] > 6000:
            print(f"--dense needs at most 6000 parameters (this model has {base.shape[1]}): use a smaller --dim", file=sys.stderr)
            return 2
        dense_report("at the state", base, m.factors, loss)
        if trace:
            dense_report("at Newton's first iterate", trace[0]["theta"], m.factors, loss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
