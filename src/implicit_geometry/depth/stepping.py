"""Path-following step sizes for deep UFMs trained from small initialization (any depth, no hand tuning).

Plain gradient descent with a step that suits depth 1 diverges at depth 5..10 (the sharpness of the loss grows
like the product of the factor norms), while a step small enough for depth 10 makes depth 1 crawl. The
``"path"`` optimizer of :class:`PathSimulator` instead moves along the normalized gradient ``-g/||g||`` by

    h = min(eta * ||theta||, 20 eta * (first-order decrease) / (second-order term))

per run. Why this follows the gradient-flow *path* (only its time parametrization changes):

- near the origin (small logits) the loss is ``<dL/dZ(0), Z(theta)>`` to first order, homogeneous of degree
  L+1 in theta, so gradient-flow trajectories are scale-invariant there and a step that is a fixed fraction
  ``eta`` of ``||theta||`` resolves them equally well at every scale and every depth;
- once the logits are large, the softmax curvature along the step (exact, in the log domain) caps it so that
  the quadratic term stays below ``10 eta`` of the linear one.

**Plateaus (saddles).** From L = 6 on, most runs first collapse to rank-1 logits: one mode runs away, the other
classes sit at the bottom of a stiff ravine (curvature ~ ``sigma_1^(2L/(L+1))``) and the escape along the
small modes is slow in flow time. Any explicit step that follows gradient flow is capped by the stiff
curvature there (the cap above drops to ~1e-3 of ``eta ||theta||``), so escaping takes ~1e5 steps. A run is
declared *on a plateau* when, at a window mark (every ``window`` steps), it still misclassifies a sample (smallest
margin <= 0: no terminal geometry), the curvature cap binds hard (``< stiff_ratio * eta ||theta||``) and its
log-loss fell by less than ``flat_tol`` over the window. Such a run is integrated by **backward Euler** on
gradient flow, ``theta_{k+1} = theta_k - dt grad L(theta_{k+1})``, i.e. the proximal problem
``min L(theta) + ||theta - theta_k||^2 / (2 dt)``, solved by Newton's method (:func:`backward_euler_step`): conjugate
gradients on ``(H + I/dt) x = -r`` with the exact Hessian-vector product, preconditioned by the Gauss-Newton
system ``I/dt + J^T S J`` (S the per-sample softmax Hessian), which is factorized through the logit kernel (one
``(NK) x (NK)`` Cholesky per run, push-through identity). Backward Euler is L-stable: the stiff directions sit on
their slow manifold whatever dt, and the slow escape is followed with steps limited by accuracy alone, the same
rule as the explicit steps: a step may move the factors by at most ``eta ||theta||`` (a longer one is refused and
dt shrinks in proportion, a shorter one lets dt grow, at most 2x); a step whose Newton iteration does not converge
(dt beyond what the saddle's negative curvature allows) is retried at half the flow time. As ``eta -> 0`` it
converges to gradient flow like the explicit rule. After the first implicit step the steps are **BDF2** (variable
step, :func:`bdf2_center`): the same proximal problem about an extrapolated centre with a shortened dt, L-stable
like backward Euler and second order. At the same move cap it follows the flow's path more closely: the class order
around the learned 10-gon, a discrete outcome of the whole path, matches the explicit rule's (which crosses the
plateau in ~1e4-1e5 curvature-capped steps) at L = 6 for 5/5 seeds where backward Euler matched 4/5 (the fifth
only at eta / 2), with ~5% fewer implicit steps (``benchmarks/plateau_fidelity.py``, docs/depth.md). A run leaves
plateau mode once every sample has been classified
for a whole window and explicit steps cover at least ``1/exit_ratio`` of the implicit step's flow time.

**Slow-manifold steps** (:func:`slow_manifold_step`, session 21) are tried before BDF2. On the rank-1 saddle the
Gauss-Newton curvature has a wide gap (L = 10, paper setting: ~48 directions from ~2 up to 1e9-1e11, the rest below
0.07) and the exact Hessian off those stiff directions lies in about [-0.01, 0.07]. Gradient flow keeps the stiff
directions at equilibrium, so the step holds them there (a Broyden solve in their ~48 coordinates) and takes an
explicit Heun step along the rest. It follows the same path (the L = 10 escapes land within ~1% of BDF2's flow
times) at flow time ~1 per step where BDF2's Newton iteration fails beyond ~0.1-0.5, 5-30x cheaper per unit of
flow time. Where it does not apply (nothing stiff, no stable stiff equilibrium, or its projection keeps failing,
as when an escape gets under way) the run takes BDF2 steps. A projection that fails at dt caps the run's dt below it
for a while (``SLOW_CAP_SHRINK``). ``slow_steps=False`` keeps BDF2 throughout. Once the formed logit kernel's rounding
noise nears the cut (late on L = 10 seed 0's saddle, where the stiffness reaches 1e14-1e15), the stiff directions come
from the kernel's square root: that noise had stopped the slow-manifold steps there, and with it the run follows the
flow to its escape (docs/depth.md, session 23). ``root_spectrum=False`` keeps the formed kernel throughout.

Why Newton and not Gauss-Newton: on the saddle the misclassified samples keep O(1) gradients on large factors, so
the residual (non-Gauss-Newton) part of the Hessian is as large as the rest; the linearly implicit Euler step of
sessions 2-8 (one Gauss-Newton solve) was accepted only up to dt ~ 0.01-0.03 and diverged beyond, and Gauss-Newton
iterations on the proximal problem accept 1/16-1/64 of their steps; Newton converges in 4-8 iterations.

Measured (paper setting, 5 seeds): every run at L = 1..9 reaches the terminal phase (L = 8, 9: about 130-200
implicit steps per run); at L = 10 the escape needs a flow time of ~100-500 units with sigma_1 growing past
1e8 (docs/depth.md, ``benchmarks/saddle_escape.py``): 155-321 steps for seeds 1-4 with slow-manifold steps, 1,010
for seed 0, whose stiffness reaches 1e15 (root spectrum, session 23). A plateau run predicts its escape from the
growth of the second singular value of its class-mean logits (a blow-up ``d sigma_2/dt = c sigma_2^p``,
p = 2L/(L+1)) and stops early, flagged as ``stalled`` with the prediction, when the escape lies far beyond what its
remaining budget buys (:meth:`PathSimulator._check_stall`).

Heavy-ball and Nesterov steps in place of the implicit ones were tried and rejected: with a restart on loss
increase they follow gradient flow but are ~10x slower than the implicit steps at L = 6 and do not escape at
L = 8-10; without it they leave the gradient-flow path (docs/depth.md).

``eta`` (default 0.01) is the only knob; halving it must not change the reached solution (tested against plain
small-step gradient descent on small cases).

**The code phase (directional convergence).** The terminal phase (every margin >= 10, say) is not yet the geometry
gradient descent converges to: without regularization the factors grow without bound and only their *direction*
converges, to a KKT point of the max-margin problem (the implicit bias). At margin 10 it is often far from there:
at L >= 6 the escaped runs are lopsided rank-2 codes (sigma_2/sigma_1 ~ 1e-4..1e-2, adjacent angles tens of degrees
off 360/K), and under the path rule (or gradient flow) the margin then grows only like log t, so the direction
moves ever more slowly in steps. :meth:`PathSimulator.start_code` moves a run into a scale-free phase instead:
normalized steps ``theta <- theta - code_step ||theta|| g/||g||``, the Euler discretization of gradient flow's
directional dynamics in log-norm time (the loss gradient is taken in the log domain, so it never underflows). Each
step changes the direction by O(code_step), so it converges to within O(code_step) of the limit direction, at a cost
that does not grow with the margin. The run converges when its best normalized margin ``min_i margin_i /
||theta||^(L+1)`` (which gradient flow increases towards its KKT value) has grown by less than ``code_tol`` over
``code_window`` steps while every margin is at least ``code_margin``; it then takes ``settle_steps`` steps of
``settle_factor * code_step``, which damp the O(code_step) chatter around the limit, and stops. Measured
(paper setting, seeds 0-2): the L = 6 and L = 8 lopsided codes become regular 10-gons with every adjacent angle
within 0.5 degrees of 36 after 5,000-10,500 steps; at L = 1 the ETF (effective rank 9.000).
"""

from __future__ import annotations

import math

import scipy.linalg
import torch

from implicit_geometry._matmul import matmul
from implicit_geometry.depth.curvature import (
    GaussNewtonSystem,
    Params,
    flatten,
    hessian_vector_product,
    scaled_logit_kernel,
    stiff_kernel_spectrum,
    tangent_logits,
    unflatten,
)
from implicit_geometry.models.ufm import DeepUFM
from implicit_geometry.train.simulator import Simulator

__all__ = ["CODE_ASCENT", "CODE_DONE", "CODE_OFF", "CODE_SETTLE", "PathSimulator", "backward_euler_step", "bdf2_center",
           "logit_spread", "slow_manifold_step"]

# code phase of a run (PathSimulator.code_phase)
CODE_OFF, CODE_ASCENT, CODE_SETTLE, CODE_DONE = 0, 1, 2, 3
# per-run state that a checkpoint carries besides ``active``
_RUN_STATE = ("stiff", "dt", "ref_log_loss", "plateau_steps", "newton_iterations", "dt_floor", "separated",
              "plateau_time", "ref_log_sigma2", "ref_time", "predicted_escape", "stalled",
              "code_phase", "code_steps", "settled", "best_log_gamma", "window_log_gamma", "code_converged",
              "prev_theta", "prev_dt", "slow_skip", "slow_failures", "ref_steps", "slow_dt_cap", "root_regime",
              "bdf2_dt_cap")
# a plateau run is checked for a hopeless escape from STALL_AFTER implicit steps on (every 25); see _check_stall
# (FLOW_PER_STEP: flow time an implicit step covers over a whole plateau, measured 0.44-0.62 at L = 9-10; dt is
# far smaller in a plateau's first tens of steps, so the present dt alone would judge too early)
STALL_AFTER, STALL_FACTOR, FLOW_PER_STEP, STALL_MIN_REMAINING = 50, 1.5, 0.5, 10.0
# from STALL_LATE implicit steps on, what the budget buys is judged by the flow time per step since the last check
# alone (no STALL_FACTOR): a run whose steps have collapsed (slow-manifold steps no longer apply, BDF2 crawls) stops
# instead of spending its budget
STALL_LATE = 200
# a failed slow-manifold step is retried at half the flow time; after SLOW_FAILURES failures in a row the run takes
# SLOW_RETRY backward-Euler/BDF2 steps before it tries again (the stiff gap closes as an escape gets under way)
SLOW_FAILURES, SLOW_RETRY = 3, 10
# after a slow-manifold step's projection fails at dt, the run's dt stays below SLOW_CAP_SHRINK * dt, a cap that grows
# by SLOW_CAP_GROWTH with every accepted slow-manifold step (without it, measured on the L = 10 saddles, dt doubles
# back onto the failing value after every success and every other step fails; the same cap on BDF2's Newton failures
# holds dt down where an escape needs it to grow: measured, a run that escaped in 289 steps ran out of its 800). It does
# act on BDF2 in the root regime (root_spectrum, stiffness ~1e15): at the escape's onset there, BDF2 succeeded at dt and
# failed at 2 dt, step after step (L = 10 seed 0: 334 steps at dt ~1e-3, 20 Newton iterations per failure)
SLOW_CAP_SHRINK, SLOW_CAP_GROWTH = 0.75, 1.1
# the stiff frame's eigenvalues come from the formed logit kernel M while its rounding noise, bounded by
# KERNEL_ROUNDING trace(M) sqrt(n) (the band of noise eigenvalues at L = 10: 0.2 at ||M|| = 4.9e13, ~1-1.5 at 1.9e14;
# trace(M) is 2.2-2.6 ||M|| on the saddle), stays below a quarter of the cut; beyond, from the kernel's square root
# (curvature.stiff_kernel_spectrum, with the root_spectrum option)
KERNEL_ROUNDING = float(torch.finfo(torch.float64).eps)


def logit_spread(Z: torch.Tensor) -> torch.Tensor:
    """Per run, the largest within-sample logit range ``max_i (max_c z_ci - min_c z_ci)`` (B,)."""
    return (Z.amax(dim=-2) - Z.amin(dim=-2)).amax(dim=-1)


def _loss_gradient(theta: torch.Tensor, like: Params, loss):
    """``(chain, dL/dZ, dL/dtheta flattened)`` at flattened factors theta."""
    chain = DeepUFM(unflatten(theta, like)).chain()
    G, log_scale = loss.scaled_gradient(chain.logits)
    g = G * torch.exp(log_scale)[:, None, None]
    return chain, g, flatten(chain.pullback(g))


def backward_euler_step(model: DeepUFM, loss, dt: float, *, max_newton: int = 20, max_cg: int = 100,
                        center: torch.Tensor | None = None, trace: list | None = None) -> tuple[DeepUFM | None, int]:
    """One backward-Euler step of gradient flow for a single run (batch of one), ``theta = theta_k - dt grad L(theta)``,
    solved as the proximal problem ``min L(theta) + ||theta - theta_k||^2 / (2 dt)`` by Newton's method. Returns the
    new model and the Newton iterations used, or ``(None, iterations)`` if Newton did not converge (take a smaller dt).

    Each Newton system ``(H + I/dt) x = -r`` (H the exact Hessian, by
    :func:`~implicit_geometry.depth.curvature.hessian_vector_product`; r the proximal gradient) is solved by conjugate
    gradients preconditioned with the Gauss-Newton system ``I/dt + J^T S J`` (one N k Cholesky), truncated where CG
    meets negative curvature, then backtracked (Armijo) on the proximal objective, so the loss never rises.
    Gauss-Newton iterations alone are not enough on the saddle plateaus this is for: misclassified samples keep O(1)
    gradients on large factors, the residual part of the Hessian matters, and Gauss-Newton steps are accepted only
    at 1/16-1/64 of their length (tens of iterations per step, against 5-8 for Newton; docs/depth.md). Converged when
    the Gauss-Newton correction is below ``1e-8 ||theta||``, or when no decrease is left that double precision can
    resolve.

    ``center`` (flattened, 1 x P) replaces ``theta_k`` as the proximal centre, ``theta = center - dt grad L(theta)``,
    with Newton still started from the model's factors: the form of a BDF2 step (:func:`bdf2_center`).

    ``trace``, if given, receives one dict per Newton iteration that took a step (for diagnostics,
    ``benchmarks/plateau_newton.py``): ``residual`` (the proximal gradient's norm before the step), ``cg`` (CG
    iterations), ``curvature`` (the Hessian's Rayleigh quotient where CG met negative curvature, else None),
    ``alpha`` (the accepted step length) and ``theta`` (the new iterate, flattened)."""
    # parameters as one flat vector (factors are views of it): the CG and line-search updates are one op each; theta
    # is always a tensor of this function's own (never written after it is returned), so the result is views of it
    like = model.factors
    theta = flatten(like)
    base = theta.clone() if center is None else center
    scale = float(torch.linalg.vector_norm(theta))
    dts = torch.full((1,), dt, dtype=theta.dtype, device=theta.device)
    phi0 = None  # the proximal objective at theta (carried over from the line search that accepted it)
    for it in range(max_newton):
        chain, g_logits, grad = _loss_gradient(theta, like, loss)
        r = grad + (theta - base) / dt
        system = GaussNewtonSystem(loss, chain, dts)
        if bool(system.failed.any()):
            return None, it
        z = dt * system.inverse_flat(-r, like)  # the Gauss-Newton correction (I/dt + J^T S J)^{-1} (-r)
        z_norm = float(torch.linalg.vector_norm(z))
        if not math.isfinite(z_norm):
            return None, it
        # converged: the correction is below 1e-8 ||theta|| -- after at least one iteration, or a dt so small that the
        # whole step is below that would return theta_k itself
        if it > 0 and z_norm <= 1e-8 * scale:
            return DeepUFM(unflatten(theta, like)), it
        x = torch.zeros_like(theta)
        negative = None
        res = -r  # a new tensor: updated in place below
        p, rz = z, float(_dot(res, z))
        r0 = math.sqrt(max(rz, 0.0))
        for j in range(max_cg):
            Ap = flatten(hessian_vector_product(chain, g_logits, system.C, unflatten(p, like))).add_(p, alpha=1.0 / dt)
            pAp = float(_dot(p, Ap))
            if not pAp > 0:  # negative curvature: keep the CG iterate so far (the Gauss-Newton step if none)
                if trace is not None:
                    negative = pAp / float(_dot(p, p)) - 1.0 / dt
                if j == 0:
                    x = z
                break
            a = rz / pAp
            x.add_(p, alpha=a)
            res.sub_(Ap, alpha=a)
            zc = system.inverse_flat(res, like).mul_(dt)
            rz_new = float(_dot(res, zc))
            if math.sqrt(max(rz_new, 0.0)) <= 1e-2 * r0:
                break
            p = zc.add_(p, alpha=rz_new / rz)
            rz = rz_new
        slope = float(_dot(r, x))
        if phi0 is None:
            phi0 = _proximal_objective(theta, like, loss, base, dt)
        if not slope < 0:
            return None, it + 1
        if -slope <= 1e-13 * abs(phi0):  # no decrease left that double precision can resolve
            return DeepUFM(unflatten(theta, like)), it + 1
        alpha = 1.0
        for _ in range(40):
            cand = torch.add(theta, x, alpha=alpha)
            phi = _proximal_objective(cand, like, loss, base, dt)
            if math.isfinite(phi) and phi <= phi0 + 1e-4 * alpha * slope:
                break
            alpha *= 0.5
        else:
            return None, it + 1
        if trace is not None:
            trace.append({"residual": float(torch.linalg.vector_norm(r)), "cg": j + 1, "curvature": negative,
                          "alpha": alpha, "theta": cand.clone()})
        theta, phi0 = cand, phi
    return None, max_newton


class _StiffFrame:
    """The stiff directions of one run's loss at its current factors, and the exact Hessian in them.

    They are the logit directions whose Gauss-Newton curvature exceeds ``cut``: the eigenvectors e_j (eigenvalue
    lambda_j) of ``M = C^T J J^T C`` (:func:`~implicit_geometry.depth.curvature.scaled_logit_kernel`), lifted to the
    parameters as ``v_j = J^T C e_j / sqrt(lambda_j)``, an orthonormal set (``v_i . v_j = e_i^T M e_j / ...``). The
    basis is kept implicit (a push and a pullback through the frozen chain), so a frame costs one eigendecomposition
    of the N(k-1)-square M, not a dense P x nf matrix. In these coordinates the Gauss-Newton Hessian is
    ``diag(lambda)``; the residual part of the Hessian matters only for the smallest stiff directions (measured on the
    L = 10 saddle: 624 against lambda = 6.5, while every lambda above 1e3 agrees to 1e-4), so their rows are exact
    (one Hessian-vector product each)."""

    def __init__(self, loss, chain, grad_logits: torch.Tensor, cut: float, exact_below: float = 1e3,
                 root_spectrum: bool = True) -> None:
        self.chain, self.like = chain, chain.factors
        ones = torch.ones(1, dtype=grad_logits.dtype, device=grad_logits.device)
        self.C, M = scaled_logit_kernel(loss, chain, ones)
        self.from_root = root_spectrum and float(M[0].diagonal().sum()) * KERNEL_ROUNDING * M.shape[-1] ** 0.5 > 0.25 * cut
        if self.from_root:
            # M's rounding noise nears the cut: its small eigenpairs are noise (docs/depth.md); take them from its root
            lam, E = stiff_kernel_spectrum(chain, self.C, cut)
        else:
            # LAPACK's divide and conquer through SciPy: ~2x torch.linalg.eigh's time saved at this size (450, one thread)
            lam, E = (torch.from_numpy(a).to(M.device) for a in scipy.linalg.eigh(M[0].cpu().numpy(), driver="evd", check_finite=False))
        keep = lam > cut
        self.lam = lam[keep]
        self.Y = E[:, keep] / self.lam.sqrt()  # N(k-1) x nf: logit-space coefficients of the orthonormal basis
        self.size = int(keep.sum())
        H = torch.diag(self.lam)
        eye = torch.eye(self.size, dtype=lam.dtype, device=lam.device)
        for j in (self.lam < exact_below).nonzero().squeeze(1).tolist():
            hv = hessian_vector_product(chain, grad_logits, self.C, unflatten(self.lift(eye[j]), self.like))
            row = self.coords(flatten(hv))
            H[j, :] = row
            H[:, j] = row
        self.hessian = 0.5 * (H + H.T)

    def coords(self, v: torch.Tensor) -> torch.Tensor:
        """Components of a flattened parameter vector (1 x P) along the stiff directions (nf,)."""
        Jv = self.chain.push(unflatten(v, self.like))
        y = matmul(self.C.transpose(-1, -2), Jv.transpose(1, 2)[..., None]).reshape(-1)
        return self.Y.T @ y

    def lift(self, c: torch.Tensor) -> torch.Tensor:
        """The parameter vector (1 x P) with stiff components c and no others."""
        N = self.chain.logits.shape[-1]
        y = (self.Y @ c).reshape(1, N, -1, 1)
        return flatten(self.chain.pullback(matmul(self.C, y).squeeze(-1).transpose(1, 2)))


def _onto_slow_manifold(theta: torch.Tensor, like: Params, loss, frame: _StiffFrame, max_iter: int = 30,
                        tol: float = 1e-10):
    """Move theta along the frame's stiff directions until the loss gradient has no component left there (the stiff
    modes relaxed: the slow manifold). Broyden's method in the nf stiff coordinates from the frame's exact Hessian:
    the Hessian off the manifold is up to ~3x the one on it (measured), which stalls a Newton iteration that keeps
    it fixed, while recomputing it costs ~50 Hessian-vector products. Returns ``(theta, gradient, its stiff
    components, iterations)``, theta None if it does not converge (the caller takes a shorter step)."""
    B = frame.hessian.clone()
    _, _, grad = _loss_gradient(theta, like, loss)
    rho = frame.coords(grad)
    start = float(torch.linalg.vector_norm(rho))
    for it in range(max_iter):
        s = -torch.linalg.solve(B, rho)
        theta = theta + frame.lift(s)
        _, _, grad = _loss_gradient(theta, like, loss)
        new = frame.coords(grad)
        size = float(torch.linalg.vector_norm(new))
        if not math.isfinite(size) or size > 1e3 * max(start, 1e-300):
            return None, grad, new, it + 1
        B += torch.outer(new - rho - B @ s, s) / torch.dot(s, s)
        rho = new
        if float(torch.linalg.vector_norm(s)) <= tol * float(torch.linalg.vector_norm(theta)):
            return theta, grad, rho, it + 1
    return None, grad, rho, max_iter


def slow_manifold_step(model: DeepUFM, loss, dt: float, *, cut: float = 1.0, root_spectrum: bool = True,
                       info: dict | None = None) -> tuple[DeepUFM | None, int]:
    """One step of gradient flow for a single run on a saddle plateau, taken on its slow manifold: Heun's method
    (second order, explicit) on the gradient with its stiff components removed, each stage brought back onto the
    manifold where the stiff components of the gradient vanish (:func:`_onto_slow_manifold`). Returns the new model
    and the solver iterations; ``(None, 0)`` where the step does not apply (nothing stiff, or no stable equilibrium
    of the stiff directions: take a backward-Euler step), ``(None, iterations)`` where its projection did not
    converge (take a shorter step).

    Why: on the rank-1 saddle of deep runs the Gauss-Newton curvature has a wide gap (L = 10, paper setting: ~48
    directions above 2, up to 1e9-1e11, the rest below 0.07), and the exact Hessian off those stiff directions lies in
    [-0.01, 0.07]. The stiff modes relax in microseconds of flow time, so gradient flow keeps them at equilibrium
    (their gradient components ~0) and moves along the rest, which an explicit step follows at dt ~ 1 and beyond.
    Backward Euler reaches the same path, but its Newton iteration leaves the manifold and lands on the stiff walls
    (docs/depth.md); here the stiff directions are solved for alone, in nf ~ 50 coordinates. Stiff directions are
    those with Gauss-Newton eigenvalue above ``cut`` (measured at L = 10: the gap lies between ~2 and ~0.07). The
    step declines if there are none (nothing is stiff) or their Hessian is not positive definite (no stable
    equilibrium to follow). ``root_spectrum``: once the formed logit kernel's rounding noise nears the cut, take the
    stiff directions from its square root (:func:`~implicit_geometry.depth.curvature.stiff_kernel_spectrum`);
    ``info["root"]`` then tells whether it did (``info``: a dict to fill, where given)."""
    like = model.factors
    theta = flatten(like)
    chain, g, grad = _loss_gradient(theta, like, loss)
    frame = _StiffFrame(loss, chain, g, cut, root_spectrum=root_spectrum)
    if info is not None:
        info["root"] = frame.from_root
    if frame.size == 0 or bool(torch.linalg.cholesky_ex(frame.hessian)[1] != 0):
        return None, 0
    v1 = grad - frame.lift(frame.coords(grad))
    predicted = theta - dt * v1
    euler, grad_e, stiff_e, it1 = _onto_slow_manifold(predicted, like, loss, frame)
    if euler is None:
        return None, it1
    v2 = grad_e - frame.lift(stiff_e)
    # the Euler stage's correction onto the manifold predicts the Heun stage's (same step, same curvature)
    heun, _, _, it2 = _onto_slow_manifold(theta - 0.5 * dt * (v1 + v2) + (euler - predicted), like, loss, frame)
    if heun is None:
        return None, it1 + it2
    return DeepUFM(unflatten(heun, like)), it1 + it2


def bdf2_center(theta: torch.Tensor, previous: torch.Tensor, dt: float, previous_dt: float) -> tuple[torch.Tensor, float]:
    """The variable-step BDF2 step of gradient flow as a proximal step: ``theta_{n+1} = c - dt' grad L(theta_{n+1})``
    with ``c = ((1 + w)^2 theta_n - w^2 theta_{n-1}) / (1 + 2w)`` and ``dt' = dt (1 + w) / (1 + 2w)``, ``w = dt /
    previous_dt`` (flattened parameters). Returns ``(c, dt')`` for :func:`backward_euler_step` (``center=c``).
    BDF2 is L-stable like backward Euler and second order; zero-stable for ``w < 1 + sqrt 2`` (the plateau steps
    grow dt at most 2x a step).

    >>> import torch
    >>> c, h = bdf2_center(torch.tensor([[3.0]]), torch.tensor([[0.0]]), 1.0, 1.0)  # constant steps: 4/3, -1/3, 2/3
    >>> float(c[0, 0]), h
    (4.0, 0.6666666666666666)
    """
    w = dt / previous_dt
    return ((1 + w) ** 2 * theta - w * w * previous) / (1 + 2 * w), dt * (1 + w) / (1 + 2 * w)


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Inner product of two flattened single-run vectors (1 x P)."""
    return torch.dot(x[0], y[0])


def _proximal_objective(theta: torch.Tensor, like: Params, loss, base: torch.Tensor, dt: float) -> float:
    diff = theta - base
    return float(torch.exp(loss.log_loss(DeepUFM(unflatten(theta, like)).logits()))[0] + _dot(diff, diff) / (2.0 * dt))


class PathSimulator(Simulator):
    """A :class:`Simulator` with the path-following step and per-run freezing: runs whose ``active`` flag is False
    are not updated (so a batch can stop each run at its own terminal point and still be deterministic per run).

    Runs on a plateau (see the module docstring) switch to backward-Euler steps (each moving the factors by at most
    ``eta ||theta||``, like the explicit rule) until every sample is classified correctly and explicit steps are
    cheaper again; ``plateau=False`` keeps the explicit path step throughout. ``plateau_steps`` counts, per run, the
    backward-Euler steps tried (converged or not); a run gets at most ``plateau_budget`` of them (each costs tens to
    hundreds of explicit steps), then continues with explicit steps.

    ``eta`` is taken from ``optimizer.lr`` when ``optimizer.name`` is ``"path"``-like; the other optimizers
    (``gd``, ``ngd``) are delegated to the core :class:`Simulator` unchanged.
    """

    def __init__(self, model, loss, eta: float = 0.01, optimizer=None, path: bool = True, plateau: bool = True,
                 window: int = 50, flat_tol: float = 0.05, stiff_ratio: float = 0.1, exit_ratio: float = 100.0,
                 plateau_budget: int = 1200, code_step: float = 0.01, code_window: int = 500, code_tol: float = 0.01,
                 code_margin: float = 10.0, code_max_steps: int = 20000, settle_steps: int = 1000,
                 settle_factor: float = 0.1, slow_steps: bool = True, root_spectrum: bool = True) -> None:
        super().__init__(model, loss, optimizer)
        self.eta = float(eta)
        self.path = bool(path)
        self.curvature = True
        self.curvature_factor = 20.0
        self.plateau = bool(plateau)
        self.window, self.flat_tol, self.stiff_ratio = int(window), float(flat_tol), float(stiff_ratio)
        self.exit_ratio = float(exit_ratio)
        self.plateau_budget = int(plateau_budget)
        self.slow_steps = bool(slow_steps)
        self.root_spectrum = bool(root_spectrum)
        dev, B = model.factors[0].device, model.batch
        self.active = torch.ones(B, dtype=torch.bool, device=dev)
        self.stiff = torch.zeros(B, dtype=torch.bool, device=dev)  # on a plateau: implicit steps
        self.dt = torch.zeros(B, dtype=torch.float64, device=dev)  # their flow-time step
        self.ref_log_loss = torch.full((B,), math.inf, dtype=torch.float64, device=dev)  # at the last window mark
        self.plateau_steps = torch.zeros(B, dtype=torch.long, device=dev)
        self.newton_iterations = torch.zeros(B, dtype=torch.long, device=dev)
        self.dt_floor = torch.zeros(B, dtype=torch.float64, device=dev)  # below it, give up plateau mode
        self.separated = torch.zeros(B, dtype=torch.bool, device=dev)  # every sample classified at the last window mark
        # how long a run has been on its plateau (flow time of the accepted implicit steps), log sigma_2 of its
        # class-mean logits at the last check (at first: on entry) and when, and the predicted escape (_check_stall)
        self.plateau_time = torch.zeros(B, dtype=torch.float64, device=dev)
        self.ref_log_sigma2 = torch.full((B,), math.nan, dtype=torch.float64, device=dev)
        self.ref_time = torch.zeros(B, dtype=torch.float64, device=dev)
        self.ref_steps = torch.zeros(B, dtype=torch.long, device=dev)  # plateau steps at the last check
        self.predicted_escape = torch.full((B,), math.nan, dtype=torch.float64, device=dev)
        self.stalled = torch.zeros(B, dtype=torch.bool, device=dev)  # gave up: the escape is far beyond the budget
        # the factors before the last accepted implicit step (flattened) and its flow time, for BDF2 (0: no history)
        self.prev_theta = torch.zeros((B, sum(F[0].numel() for F in model.factors)), dtype=torch.float64, device=dev)
        self.prev_dt = torch.zeros(B, dtype=torch.float64, device=dev)
        # plateau steps left before the run tries a slow-manifold step again (0: try it now)
        self.slow_skip = torch.zeros(B, dtype=torch.long, device=dev)
        self.slow_failures = torch.zeros(B, dtype=torch.long, device=dev)  # failed slow-manifold steps in a row
        self.slow_dt_cap = torch.full((B,), math.inf, dtype=torch.float64, device=dev)  # see SLOW_CAP_SHRINK
        # the last stiff frame came from the kernel's root (root_spectrum); there BDF2's failures cap dt as well
        self.root_regime = torch.zeros(B, dtype=torch.bool, device=dev)
        self.bdf2_dt_cap = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
        k, labels = loss.num_classes, loss.labels
        counts = torch.bincount(labels, minlength=k).to(torch.float64)
        self._class_avg = torch.zeros((labels.numel(), k), dtype=torch.float64, device=dev)
        self._class_avg[torch.arange(labels.numel(), device=dev), labels] = 1.0 / counts[labels]
        # the code phase (directional convergence, see start_code)
        self.code_step, self.code_window, self.code_tol = float(code_step), int(code_window), float(code_tol)
        self.code_margin, self.code_max_steps = float(code_margin), int(code_max_steps)
        self.settle_steps, self.settle_factor = int(settle_steps), float(settle_factor)
        self.code_phase = torch.zeros(B, dtype=torch.long, device=dev)  # CODE_OFF / CODE_ASCENT / CODE_SETTLE / CODE_DONE
        self.code_steps = torch.zeros(B, dtype=torch.long, device=dev)  # normalized steps taken in the ascent
        self.settled = torch.zeros(B, dtype=torch.long, device=dev)  # steps taken in the settle stage
        self.best_log_gamma = torch.full((B,), -math.inf, dtype=torch.float64, device=dev)
        self.window_log_gamma = torch.full((B,), -math.inf, dtype=torch.float64, device=dev)  # best at the last window mark
        self.code_converged = torch.zeros(B, dtype=torch.bool, device=dev)

    def start_code(self, runs: torch.Tensor) -> None:
        """Move ``runs`` (a boolean mask) into the code phase: scale-free normalized steps that follow gradient flow's
        directional dynamics until the normalized margin stops growing (see the module docstring)."""
        self.code_phase = torch.where(runs & (self.code_phase == CODE_OFF), torch.full_like(self.code_phase, CODE_ASCENT),
                                      self.code_phase)
        self.stiff &= ~runs  # done with its plateau (a stale flag would have the experiment check it every step)

    def update(self) -> None:
        if self.path and not bool(self.active.all()):
            # only the active runs are computed: a cell often waits on one run's code phase or plateau while the
            # others are done. Their factors and per-run state are cut out, stepped and put back.
            idx = self.active.nonzero().squeeze(1)
            if idx.numel() == 0:
                self.step += 1
                return
            full, state = self.model, {name: getattr(self, name) for name in ("active",) + _RUN_STATE}
            self.model = DeepUFM([F[idx] for F in full.factors])
            for name, value in state.items():
                setattr(self, name, value[idx])
            try:
                self._update()
            finally:
                for F, Fs in zip(full.factors, self.model.factors):
                    F[idx] = Fs
                for name, value in state.items():
                    value[idx] = getattr(self, name)
                    setattr(self, name, value)
                self.model = full
            return
        self._update()

    def _update(self) -> None:
        coding = self.active & ((self.code_phase == CODE_ASCENT) | (self.code_phase == CODE_SETTLE))
        if not self.path:
            moving = self.active & ~coding
            before = [F.clone() for F in self.model.factors] if not bool(moving.all()) else None
            pre = self._gradient() if bool(coding.any()) else None
            super().update()
            if before is not None:  # frozen runs (and code-phase runs, stepped below) keep their factors
                for F, F0 in zip(self.model.factors, before):
                    F[~moving] = F0[~moving]
            if pre is not None:
                self._code_update(coding, *pre)
            return
        model = self.model
        chain = model.chain()
        Z = chain.logits
        G, log_scale = self.loss.scaled_gradient(Z)
        grads = chain.pullback(G)
        gnorm = torch.sqrt(sum(torch.linalg.vector_norm(g, dim=(1, 2)) ** 2 for g in grads)).clamp_min(1e-300)
        tnorm = torch.sqrt(model.squared_norm())
        moving = self.active & ~coding
        if bool(moving.any()):
            self._path_step(chain, G, log_scale, grads, gnorm, tnorm, moving)
        if bool(coding.any()):  # code-phase runs were not moved by the path step (length 0): the same gradient serves
            self._code_update(coding, Z, grads, gnorm, tnorm)
        self.step += 1

    def _path_step(self, chain, G, log_scale, grads, gnorm, tnorm, moving) -> None:
        """The path rule (explicit, or backward Euler on a plateau) for the runs in ``moving``."""
        model, Z = self.model, chain.logits
        relative = self.eta * tnorm
        length = relative
        if self.curvature:
            # dZ per unit step along -g/||g||, and the loss's first- and second-order change along it, both in the
            # scaled units of G (off-label G_ci = w_i p_ci / sigma, sigma = exp(log_scale)), so their ratio is exact
            # however small the loss. Second order: sum_i w_i Var_{p_i}(dz_i), written relative to the label entry
            # (Var is shift-invariant) so that nothing cancels when p_i is nearly one-hot. The step keeps the
            # quadratic term below 10*eta of the linear one.
            T = tangent_logits(chain, grads) / gnorm[:, None, None]
            first = -(G * T).sum(dim=(1, 2))
            idx = self.loss.labels.expand(T.shape[0], 1, -1)
            rel = (T - T.gather(1, idx)).scatter(1, idx, 0.0)
            Goff = G.scatter(1, idx, 0.0)
            sigma = torch.exp(log_scale)[:, None] / torch.exp(self.loss._log_sample)[None, :]
            var = (Goff * rel**2).sum(dim=1) - sigma * (Goff * rel).sum(dim=1) ** 2
            second = var.clamp_min(0.0).sum(dim=1)
            length = torch.minimum(length, self.curvature_factor * self.eta * first / second.clamp_min(1e-300))
        implicit = torch.zeros_like(self.active)
        if self.plateau:
            implicit = self._plateau_modes(Z, length, relative, log_scale + torch.log(gnorm), moving)
        length = torch.where(moving & ~implicit, length, torch.zeros_like(length))
        self.prev_dt = torch.where(moving & ~implicit, torch.zeros_like(self.prev_dt), self.prev_dt)  # BDF2 restarts
        scale = (length / gnorm)[:, None, None]
        for F, g in zip(model.factors, grads):
            F.addcmul_(g, scale, value=-1.0)
        if bool(implicit.any()):
            self._implicit_steps(implicit.nonzero().squeeze(1))

    def _gradient(self):
        """Logits, factor gradients (of the scaled loss gradient: a direction, exact in the log domain), their norm and
        the parameter norm, per run."""
        chain = self.model.chain()
        G, _ = self.loss.scaled_gradient(chain.logits)
        grads = chain.pullback(G)
        gnorm = torch.sqrt(sum(torch.linalg.vector_norm(g, dim=(1, 2)) ** 2 for g in grads)).clamp_min(1e-300)
        return chain.logits, grads, gnorm, torch.sqrt(self.model.squared_norm())

    def _code_update(self, coding: torch.Tensor, Z: torch.Tensor, grads, gnorm: torch.Tensor, tnorm: torch.Tensor) -> None:
        """One normalized step for the code-phase runs (relative length ``code_step``, ``settle_factor`` times that
        while settling) and the bookkeeping of their normalized margin at the state before the step."""
        ascent = coding & (self.code_phase == CODE_ASCENT)
        settle = coding & (self.code_phase == CODE_SETTLE)
        R = torch.where(ascent, self.code_step, self.code_step * self.settle_factor)
        length = torch.where(coding, R * tnorm, torch.zeros_like(tnorm))
        scale = (length / gnorm)[:, None, None]
        for F, g in zip(self.model.factors, grads):
            F.addcmul_(g, scale, value=-1.0)
        # normalized margin min_i margin_i / ||theta||^(L+1) (scale-invariant: Z is homogeneous of degree L+1), in logs
        y = self.loss.labels.expand(Z.shape[0], 1, -1)
        margin = (Z.gather(1, y).squeeze(1) - Z.scatter(1, y, -math.inf).amax(dim=1)).amin(dim=1)
        log_gamma = torch.where(margin > 0, torch.log(margin.clamp_min(1e-300)) - (self.model.depth + 1) * torch.log(tnorm),
                                torch.full_like(margin, -math.inf))
        self.best_log_gamma = torch.where(ascent, torch.maximum(self.best_log_gamma, log_gamma), self.best_log_gamma)
        self.code_steps += ascent.long()
        mark = ascent & (self.code_steps % self.code_window == 0)
        # converged: the best normalized margin grew by less than code_tol (relative) over the last window, and the
        # run is in the terminal phase now (smallest margin at least code_margin)
        gain = self.best_log_gamma - self.window_log_gamma
        converged = mark & torch.isfinite(self.best_log_gamma) & (gain <= math.log1p(self.code_tol)) & (margin >= self.code_margin)
        self.window_log_gamma = torch.where(mark, self.best_log_gamma, self.window_log_gamma)
        self.code_converged |= converged
        give_up = ascent & ~converged & (self.code_steps >= self.code_max_steps)
        self.settled += settle.long()
        done = settle & (self.settled >= self.settle_steps)
        phase = torch.where(converged | give_up, torch.full_like(self.code_phase, CODE_SETTLE), self.code_phase)
        self.code_phase = torch.where(done, torch.full_like(phase, CODE_DONE), phase)
        self.active &= ~done  # frozen at once, however often the caller looks

    def _plateau_modes(self, Z, length, relative, log_gnorm, moving) -> torch.Tensor:
        """Enter/leave plateau mode per run; returns which runs take an implicit step now."""
        y = self.loss.labels.expand(Z.shape[0], 1, -1)
        margin = (Z.gather(1, y).squeeze(1) - Z.scatter(1, y, -math.inf).amax(dim=1)).amin(dim=1)
        log_loss = self.loss.log_loss(Z)
        # leave plateau mode once every sample has been classified for a whole window (dt shrinks while the saddle
        # is escaped and needs the window to regrow) and the explicit step covers at least 1/exit_ratio of the
        # implicit step's flow time (it costs about that much less); at once before the loss could underflow. Not
        # while a sample is misclassified: right after an implicit step the stiff components sit on the ravine
        # floor, where the explicit step's curvature cap is briefly loose
        dt_explicit = length * torch.exp(-log_gnorm)
        if self.step % self.window == 0:
            self.stiff &= ~self.separated | (dt_explicit * self.exit_ratio < self.dt)
            self.separated = margin > 0
        self.stiff &= log_loss > -100.0
        # each costs tens of explicit steps: bounded per run; a run that gave up on its saddle never re-enters
        allowed = (self.plateau_steps < self.plateau_budget) & ~self.stalled
        self.stiff &= allowed
        if self.step % self.window == 0:
            enter = (~self.stiff & moving & (margin <= 0) & (length < self.stiff_ratio * relative)
                     & allowed
                     & (self.ref_log_loss - log_loss < self.flat_tol))
            # start from 100 explicit steps' flow time (the move cap adapts it at once)
            self.dt = torch.where(enter, 100.0 * dt_explicit, self.dt)
            first = enter & torch.isnan(self.ref_log_sigma2)
            if bool(first.any()):
                self.ref_log_sigma2 = torch.where(first, self._log_sigma2(Z), self.ref_log_sigma2)
            self.dt_floor = torch.where(enter, 1e-4 * dt_explicit, self.dt_floor)
            self.slow_dt_cap = torch.where(enter, torch.full_like(self.slow_dt_cap, math.inf), self.slow_dt_cap)
            self.bdf2_dt_cap = torch.where(enter, torch.full_like(self.bdf2_dt_cap, math.inf), self.bdf2_dt_cap)
            self.stiff |= enter
            self.ref_log_loss = log_loss
        return self.stiff & moving

    def _implicit_steps(self, idx: torch.Tensor) -> None:
        """One plateau step per plateau run (each run alone, so its numbers do not depend on the batch), with the path
        rule's accuracy: a step may move the factors by at most ``eta ||theta||``. A longer step is refused and dt
        shrinks in proportion; a shorter one lets dt grow in proportion (at most 2x). The step is a slow-manifold step
        (:func:`slow_manifold_step`) where it works, else BDF2. A step that fails (a slow-manifold step whose
        projection does not converge, a BDF2 step whose Newton iteration does not) is retried at half the flow time;
        after SLOW_FAILURES failed slow-manifold steps in a row (no stiff gap left, as an escape gets under way) the
        run takes SLOW_RETRY BDF2 steps before it tries again."""
        for b in idx.tolist():
            sub = DeepUFM([F[b:b + 1] for F in self.model.factors])
            dt = float(self.dt[b])
            theta_n = flatten(sub.factors)
            new, iterations = None, 0
            if self.slow_steps and int(self.slow_skip[b]) == 0:
                info: dict = {}
                new, iterations = slow_manifold_step(sub, self.loss, dt, root_spectrum=self.root_spectrum, info=info)
                if "root" in info and bool(info["root"]) != bool(self.root_regime[b]):
                    self.root_regime[b] = bool(info["root"])
                    self.bdf2_dt_cap[b] = math.inf
                if new is None:  # not applicable (no iterations): BDF2 at once, and for SLOW_RETRY steps
                    self._slow_failed(b, give_up=iterations == 0, failed_dt=dt if iterations > 0 else None)
            elif int(self.slow_skip[b]) > 0:
                self.slow_skip[b] -= 1
            slow = new is not None
            bdf2 = new is None and (iterations == 0 or int(self.slow_skip[b]) > 0)
            if bdf2:
                # not applicable here (or given up on for now): a BDF2 step at the same dt
                tried = iterations
                if float(self.prev_dt[b]) > 0:  # BDF2 from the last accepted implicit step
                    center, dt_eff = bdf2_center(theta_n, self.prev_theta[b:b + 1], dt, float(self.prev_dt[b]))
                    new, iterations = backward_euler_step(sub, self.loss, dt_eff, center=center)
                else:  # the first implicit step after explicit ones: backward Euler
                    new, iterations = backward_euler_step(sub, self.loss, dt)
                iterations += tried
            self.newton_iterations[b] += iterations
            self.plateau_steps[b] += 1
            if new is None:
                self.dt[b] = 0.5 * dt
                if bdf2 and bool(self.root_regime[b]):  # a failed Newton solve caps dt there (see SLOW_CAP_SHRINK)
                    self.bdf2_dt_cap[b] = SLOW_CAP_SHRINK * dt
                if self.dt[b] < self.dt_floor[b]:  # Newton keeps failing: back to explicit steps
                    self.stiff[b] = False
                continue
            cap = self.eta * math.sqrt(float(sub.squared_norm()[0]))
            move = float(torch.linalg.vector_norm(flatten(new.factors) - theta_n))
            self.dt[b] = dt * min(2.0, 0.9 * cap / max(move, 1e-300))
            if move > cap:
                if slow:  # may be the jump onto the manifold, which a shorter step does not shorten: a failure
                    self.dt[b] = 0.5 * dt
                    self._slow_failed(b)
                continue
            if slow:
                self.slow_failures[b] = 0
                self.dt[b] = min(float(self.dt[b]), float(self.slow_dt_cap[b]))
                self.slow_dt_cap[b] *= SLOW_CAP_GROWTH
            elif bdf2 and bool(self.root_regime[b]):
                self.dt[b] = min(float(self.dt[b]), float(self.bdf2_dt_cap[b]))
                self.bdf2_dt_cap[b] *= SLOW_CAP_GROWTH
            self.prev_theta[b] = theta_n[0]
            self.prev_dt[b] = dt
            for F, Fs in zip(self.model.factors, new.factors):
                F[b] = Fs[0]
            self.plateau_time[b] += dt
            if self.plateau_steps[b] >= STALL_AFTER and self.plateau_steps[b] % 25 == 0:
                self._check_stall(b, new.logits())

    def _slow_failed(self, b: int, give_up: bool = False, failed_dt: float | None = None) -> None:
        """Count a failed slow-manifold step of run ``b``; at SLOW_FAILURES in a row (or at once with ``give_up``) the
        run takes SLOW_RETRY BDF2 steps before it tries again. ``failed_dt``: the dt at which its projection failed,
        which caps the run's dt (SLOW_CAP_SHRINK) until then."""
        if failed_dt is not None:
            self.slow_dt_cap[b] = SLOW_CAP_SHRINK * failed_dt
        self.slow_failures[b] += 1
        if give_up or int(self.slow_failures[b]) >= SLOW_FAILURES:
            self.slow_skip[b], self.slow_failures[b] = SLOW_RETRY, 0
            self.slow_dt_cap[b] = math.inf  # the state will have moved on by the next try

    def _log_sigma2(self, Z: torch.Tensor) -> torch.Tensor:
        """log of the second singular value of each run's class-mean logits."""
        return torch.log(torch.linalg.svdvals(Z.to(torch.float64) @ self._class_avg)[:, 1].clamp_min(1e-300))

    def _check_stall(self, b: int, Z: torch.Tensor) -> None:
        """Predict when run ``b`` leaves its rank-1 saddle, and give up if that is beyond its plateau budget.

        On the saddle the second singular value of the class-mean logits grows like ``d sigma_2/dt = c sigma_2^p``,
        ``p = 2L/(L+1)``, which blows up a flow time ``1/((p-1) r)`` after a point where its relative growth rate is
        r. r is measured since the previous check (at least one unit of flow time back), so the prediction follows
        the growth as it speeds up: measured at L = 10, the first prediction (flow time 2.6-4.7 into the plateau)
        is 194 for an escape at 205 and 282 for one at ~316 (docs/depth.md). The run stops, flagged with the
        prediction, when the predicted remaining flow time exceeds both STALL_MIN_REMAINING (an escape under way is
        never stopped) and STALL_FACTOR times what its budget still buys: the implicit steps left at FLOW_PER_STEP
        each, or at the present or mean dt where larger; from STALL_LATE steps on, exactly what the budget buys at the
        flow time per step of the steps since the last check. A saddle whose sigma_2 has not grown for 20 units of
        flow time stops as well."""
        t, t_ref = float(self.plateau_time[b]), float(self.ref_time[b])
        if t - t_ref < 1.0:  # too little flow time since the last check to measure a rate
            return
        log_s2 = float(self._log_sigma2(Z)[0])
        rate = (log_s2 - float(self.ref_log_sigma2[b])) / (t - t_ref)
        self.ref_log_sigma2[b], self.ref_time[b] = log_s2, t
        steps, ref_steps = int(self.plateau_steps[b]), int(self.ref_steps[b])
        self.ref_steps[b] = steps
        p = 2.0 * self.model.depth / (self.model.depth + 1)
        if rate > 0 and p > 1:
            remaining = 1.0 / ((p - 1.0) * rate)
        elif t >= 20.0:
            remaining = math.inf
        else:  # sigma_2 may dip as a run settles onto its plateau: no judgement yet
            return
        self.predicted_escape[b] = t + remaining
        # flow time per step: since STALL_LATE steps, that of the steps since the last check (a check is skipped when
        # its step is refused, or it has under one unit of flow time to measure) with no further allowance; before,
        # the optimistic mean or FLOW_PER_STEP, with STALL_FACTOR
        late = steps >= STALL_LATE
        per_step = (t - t_ref) / max(steps - ref_steps, 1) if late else max(float(self.dt[b]), t / steps, FLOW_PER_STEP)
        affordable = max(self.plateau_budget - steps, 0) * per_step * (1.0 if late else STALL_FACTOR)
        if remaining > max(STALL_MIN_REMAINING, affordable):
            self.stalled[b] = True  # plateau_steps keeps the steps taken (the results report it)
            self.stiff[b] = False

    def state_dict(self):
        state = super().state_dict()
        for name in ("active",) + _RUN_STATE:
            state[name] = getattr(self, name).cpu().clone()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        dev = self.model.factors[0].device
        self.active = state["active"].to(dev).clone()
        for name in _RUN_STATE:
            if name in state:  # checkpoints written before plateau mode (or the code phase) existed
                setattr(self, name, state[name].to(dev).clone())
