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
   orbit's curvature, so it grows with the gradient. Last, the share of each traced Newton move (squared, as for
   the eigenvectors) that lies in the gauge space at the iterate it started from.

With ``--precision FLOWS`` it instead follows the run with the depth experiment's own simulator (plateau mode, no
stall rule) and, at each listed flow time on the plateau, checks float64 against 50-digit decimal arithmetic
(:func:`reference_gradient`): the class-mean logits' error against the size of everything but their top singular
value (``sqrt(e_2) / sigma_1``, with ``e_2`` the sum of the squared 2 x 2 minors: exact, no SVD), and the loss
gradient's relative error, overall and in the classifier ``W_L``.

    OMP_NUM_THREADS=2 python benchmarks/plateau_newton.py --dim 20 --depth 10 --seed 0 --dense      # ~6 min
    OMP_NUM_THREADS=1 python benchmarks/plateau_newton.py --dim 100 --depth 10 --seed 2 --precision 10,50,100,150,200
"""

from __future__ import annotations

import argparse
import decimal
import math
import sys
import time

import numpy as np
import torch

from implicit_geometry.depth.curvature import flatten, unflatten
from implicit_geometry.depth.stepping import PathSimulator, backward_euler_step
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train.losses import CrossEntropy

K, N_PER, STD = 10, 5, 0.03


def initial_model(dim: int, depth: int, seed: int) -> DeepUFM:
    return DeepUFM.random(num_classes=K, num_samples=K * N_PER, dim=dim, depth=depth, batch=1, init_std=STD, seeds=[seed])


def saddle_state(dim: int, depth: int, seed: int, flow: float, loss) -> DeepUFM:
    sim = PathSimulator(initial_model(dim, depth, seed), loss, eta=0.01, plateau=False)
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


def dense_report(name: str, theta: torch.Tensor, like, loss, Q: torch.Tensor) -> None:
    t0 = time.perf_counter()
    theta = theta[0].detach()

    def total_loss(flat):
        return torch.exp(loss.log_loss(DeepUFM(unflatten(flat[None], like)).logits()))[0]

    hess = torch.autograd.functional.hessian(total_loss, theta)
    flat = theta.clone().requires_grad_()
    grad = torch.autograd.grad(total_loss(flat), flat)[0]
    lam, vec = torch.linalg.eigh(hess)
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


def reference_gradient(factors: list[torch.Tensor], labels: np.ndarray, k: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The logits and the summed cross-entropy's gradient per factor in 50-digit decimal arithmetic (object arrays of
    :class:`decimal.Decimal`; float64 entries convert exactly), for a single run (B = 1)."""
    decimal.getcontext().prec = 50
    F = [np.vectorize(decimal.Decimal, otypes=[object])(f[0].cpu().numpy()) for f in factors]
    right = [F[0]]  # F_l ... F_0
    for f in F[1:]:
        right.append(np.dot(f, right[-1]))
    Z = right[-1]
    left = [None] * len(F)  # F_L ... F_{l+1} (k x d), the identity for the top factor
    left[-1] = np.array([[decimal.Decimal(int(i == j)) for j in range(k)] for i in range(k)], dtype=object)
    for l in range(len(F) - 2, -1, -1):
        left[l] = np.dot(left[l + 1], F[l + 1])
    G = np.empty(Z.shape, dtype=object)
    for i in range(Z.shape[1]):
        top = max(Z[:, i])
        e = [(z - top).exp() for z in Z[:, i]]
        total = sum(e)
        for c in range(k):
            G[c, i] = e[c] / total - int(c == labels[i])
    grads = [np.dot(left[l].T, G) if l == 0 else np.dot(np.dot(left[l].T, G), right[l - 1].T) for l in range(len(F))]
    return Z, grads


def precision_report(flow: float, model: DeepUFM, loss, labels: np.ndarray) -> None:
    k = loss.num_classes
    t0 = time.perf_counter()
    Z, grads = reference_gradient(model.factors, labels, k)
    chain = model.chain()
    G, log_scale = loss.scaled_gradient(chain.logits)
    g64 = [x[0].cpu().numpy() for x in chain.pullback(G * torch.exp(log_scale)[:, None, None])]
    counts = np.bincount(labels, minlength=k)
    means = np.array([[sum(Z[c, labels == j]) / int(counts[j]) for j in range(k)] for c in range(k)], dtype=object)
    means64 = (chain.logits[0].cpu().numpy() @ np.eye(k)[labels]) / counts
    minors = sum((means[a, c] * means[b, e] - means[a, e] * means[b, c]) ** 2
                 for a in range(k) for b in range(a + 1, k) for c in range(k) for e in range(c + 1, k))
    frob = math.sqrt(float(sum(x * x for x in means.ravel())))
    rest = float(minors.sqrt()) / frob  # sqrt(e_2) / ||M||_F = (sum_{j>1} sigma_j^2)^(1/2) when sigma_1 dominates
    err_means = float(np.abs(means.astype(float) - means64).max())
    exact = [g.astype(float) for g in grads]
    num = math.sqrt(sum(float(((a - b) ** 2).sum()) for a, b in zip(exact, g64)))
    den = math.sqrt(sum(float((a ** 2).sum()) for a in exact))
    top = float(np.linalg.norm(exact[-1] - g64[-1])) / float(np.linalg.norm(exact[-1]))
    print(f"  flow {flow:6.1f}: class-mean logits ||M|| {frob:.3e} (~sigma_1), beyond their top mode {rest:.3e}, their float64 "
          f"error {err_means:.3e}; loss gradient float64 error {num / den:.2e} relative (classifier {top:.2e})  "
          f"[{time.perf_counter() - t0:.0f} s]", flush=True)


def precision_along_plateau(dim: int, depth: int, seed: int, flows: list[float], loss, labels: np.ndarray) -> None:
    """The depth experiment's simulator (its defaults, a plateau budget that never binds) up to each flow time."""
    sim = PathSimulator(initial_model(dim, depth, seed), loss, eta=0.01, plateau_budget=10**9)
    t0 = time.perf_counter()
    with torch.no_grad():
        for flow in flows:
            while float(sim.plateau_time[0]) < flow and int(sim.step) < 10**7:
                sim.update()
                if bool(sim.separated[0]):
                    print(f"  every sample classified at flow time {float(sim.plateau_time[0]):.1f} on the plateau: "
                          "escaped", flush=True)
                    return
            print(f"  reached flow {float(sim.plateau_time[0]):.1f} after {int(sim.plateau_steps[0])} implicit steps "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
            precision_report(float(sim.plateau_time[0]), sim.model, loss, labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=20)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flow", type=float, default=10.0, help="flow time on the saddle before the probe")
    ap.add_argument("--dt", type=float, default=2.0, help="the step whose Newton iterations are traced")
    ap.add_argument("--newton", type=int, default=8, help="Newton iterations to trace")
    ap.add_argument("--dense", action="store_true", help="dense Hessian analysis (at most 6000 parameters)")
    ap.add_argument("--precision", type=lambda text: [float(x) for x in text.split(",")], default=None,
                    help="flow times on the plateau at which to check float64 (comma list)")
    a = ap.parse_args()
    params = K * N_PER * a.dim + (a.depth - 1) * a.dim * a.dim + K * a.dim
    if a.dense and params > 6000:  # checked before the minutes it takes to reach the saddle
        ap.error(f"--dense needs at most 6000 parameters (this model has {params}): use a smaller --dim")
    labels = np.repeat(np.arange(K), N_PER)
    loss = CrossEntropy(labels, K)
    if a.precision:
        print(f"d={a.dim} L={a.depth} seed {a.seed}: float64 against 50 digits along the plateau", flush=True)
        precision_along_plateau(a.dim, a.depth, a.seed, a.precision, loss, labels)
        return 0
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
        starts = [base] + [e["theta"] for e in trace]  # the state, then every Newton iterate
        # the gauge space where each move starts, and at the first iterate: one SVD each
        bases = [gauge_basis(unflatten(x, m.factors)) for x in starts[:max(len(trace), 2)]]
        dense_report("at the state", base, m.factors, loss, bases[0])
        if trace:
            dense_report("at Newton's first iterate", starts[1], m.factors, loss, bases[1])
        for i, Q in enumerate(bases[:len(trace)]):  # does Newton move along the gauge orbits? (a random direction: above)
            move = (starts[i + 1] - starts[i])[0]
            share = float((Q.T @ move).pow(2).sum() / move.pow(2).sum())
            print(f"  iteration {i}: {share:.1%} of its squared move lies in the gauge space at its start", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
