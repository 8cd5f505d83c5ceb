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
log-loss fell by less than ``flat_tol`` over the window. Such a run is integrated by **linearly implicit Euler**
on gradient flow with the Gauss-Newton curvature,

    dtheta = -dt (I + dt J^T S J)^{-1} g,        S = blockdiag_i Hess_softmax(z_i),

solved exactly through the logit-space kernel (``(NK) x (NK)`` Cholesky, push-through identity). It is
L-stable: stiff directions relax to the ravine floor instead of oscillating, while directions whose curvature is
small against ``1/dt`` move as gradient flow (``dtheta = -dt g + O(dt^2)``), so the slow escape is followed with
steps limited only by accuracy: ``||dtheta|| <= eta ||theta||``, a step that would raise the loss is rejected
(``dt /= 4``), an accepted one lets ``dt`` grow by 1.5 (or shrink to the capped length). As ``eta -> 0`` it
converges to gradient flow like the explicit rule. A run leaves plateau mode as soon as every sample is
classified correctly (margin > 0); the terminal phase then runs on the path step again.

Measured (paper setting): every run at L = 6 and 4/5 at L = 7 escape within the default budget of 600 implicit
steps per run; at L = 8-10 the accepted ``dt`` stays ~0.01-0.03 (the loss is far from quadratic along longer
steps) while the escape's flow time grows like ``s^-(L-1)``, so they do not (see docs/depth.md).

Heavy-ball and Nesterov steps in place of the implicit ones were tried and rejected: with a restart on loss
increase they follow gradient flow but are ~10x slower than the implicit steps at L = 6 and do not escape at
L = 8-10; without it they leave the gradient-flow path (docs/depth.md).

``eta`` (default 0.01) is the only knob; halving it must not change the reached solution (tested against plain
small-step gradient descent on small cases).
"""

from __future__ import annotations

import math

import torch

from implicit_geometry.train.simulator import Simulator


def logit_spread(Z: torch.Tensor) -> torch.Tensor:
    """Per run, the largest within-sample logit range ``max_i (max_c z_ci - min_c z_ci)`` (B,)."""
    return (Z.amax(dim=-2) - Z.amin(dim=-2)).amax(dim=-1)


def tangent_logits(model, chain: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """``dZ/dt`` under gradient flow ``dtheta/dt = -grads``: the forward-mode derivative of ``Z`` (B x k x N)."""
    T = -grads[0]
    for l in range(1, len(model.factors)):
        T = model.factors[l] @ T - grads[l] @ chain[l - 1]
    return T


def softmax_root(loss, Z: torch.Tensor) -> torch.Tensor:
    """Per sample a square root ``C_i`` (k x k) of the CE Hessian in the logits, ``C_i C_i^T = d^2 loss / dz_i^2``.

    Returned as B x N x k x k. For plain CE ``Hess_i = diag(p_i) - p_i p_i^T = C_i C_i^T`` with
    ``C_i = diag(sqrt p_i) - p_i sqrt(p_i)^T`` (``sum p = 1``); sample weights and multiplicative adjustments
    (``z' = Delta z + iota``) enter as ``sqrt(w_i) diag(Delta_i)``.

    >>> import torch
    >>> from implicit_geometry.train.losses import CrossEntropy
    >>> Z = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]], dtype=torch.float64)
    >>> C = softmax_root(CrossEntropy([0, 1], 3), Z)
    >>> p = torch.softmax(Z[0, :, 0], 0)
    >>> bool(torch.allclose(C[0, 0] @ C[0, 0].T, torch.diag(p) - torch.outer(p, p)))
    True
    """
    Zp = loss.adjusted_logits(Z)
    p = torch.softmax(Zp, dim=-2).transpose(-1, -2)  # B x N x k
    sp = p.sqrt()
    C = torch.diag_embed(sp) - p[..., :, None] * sp[..., None, :]
    scale = torch.exp(0.5 * loss._log_sample)[None, :, None, None]
    if loss._jac is not None:
        jac = loss._jac.expand(Z.shape[-2], Z.shape[-1]).transpose(0, 1)  # N x k
        C = C * jac[None, :, :, None]
    return C * scale


def logit_kernel(model, chain: list[torch.Tensor]) -> torch.Tensor:
    """The neural tangent kernel of the logits, ``J J^T``, as B x k x k x N x N (entry ``[c, d, i, j]`` pairs logit
    ``z_ci`` with ``z_dj``): ``sum_l (A_l A_l^T)[c, d] (B_l^T B_l)[i, j]`` with ``dZ = A_l dF_l B_l`` for factor l
    (``A_l = F_L ... F_{l+1}``, ``B_l`` the product below it, ``I`` for H). One batched matmul over the layers."""
    F = model.factors
    Bsz, k, N = chain[-1].shape
    A = torch.eye(k, dtype=F[0].dtype, device=F[0].device).expand(Bsz, k, k)
    Ps, Bs = [], []
    for l in range(len(F) - 1, -1, -1):
        Ps.append(A @ A.transpose(1, 2))
        Bs.append(torch.eye(N, dtype=F[0].dtype, device=F[0].device).expand(Bsz, N, N) if l == 0
                  else chain[l - 1].transpose(1, 2) @ chain[l - 1])
        A = A @ F[l]
    P = torch.stack(Ps, dim=-1).reshape(Bsz, k * k, len(F))
    Bg = torch.stack(Bs, dim=1).reshape(Bsz, len(F), N * N)
    return (P @ Bg).reshape(Bsz, k, k, N, N)


def second_order_logits(model, direction: list[torch.Tensor]) -> torch.Tensor:
    """The ``t^2`` coefficient of ``Z(theta + t v)`` (a polynomial in t for the product ``F_L ... F_0``):
    ``sum_{l > m} F..V_l..V_m..F`` (B x k x N)."""
    F = model.factors
    P0, P1, P2 = F[0], direction[0], torch.zeros_like(F[0])
    for Fl, Vl in zip(F[1:], direction[1:]):
        P0, P1, P2 = Fl @ P0, Fl @ P1 + Vl @ P0, Fl @ P2 + Vl @ P1
    return P2


def implicit_euler_step(model, loss, chain: list[torch.Tensor], dt: torch.Tensor,
                        geodesic: bool = True) -> list[torch.Tensor]:
    """Linearly implicit Euler step of gradient flow with the Gauss-Newton curvature, per run:
    ``-dt (I + dt J^T S J)^{-1} g`` (one tensor per factor), S the CE Hessian in the logits.

    By the push-through identity ``(I + dt J^T C C^T J)^{-1} J^T rho = J^T (rho - dt C (I + dt C^T K C)^{-1} C^T K rho)``
    with ``K = J J^T`` the logit kernel, so one Cholesky factorization of size ``N k`` per run. With ``geodesic``
    the step gets the geodesic-acceleration correction of Levenberg-Marquardt (Transtrum & Sethna): the logits
    are a product of the factors, so a straight step leaves the curved ravine floor at second order; the
    correction ``a/2``, ``a = -dt (I + dt J^T S J)^{-1} J^T S (2 P2)`` (P2 the second-order logit change along the
    step) bends it back, for one more solve with the same factor. The loss must not have underflowed (it is used
    on plateaus, where some margin is <= 0)."""
    Z = chain[-1]
    Bsz, k, N = Z.shape
    G, log_scale = loss.scaled_gradient(Z)
    r = G * torch.exp(log_scale)[:, None, None]
    C = softmax_root(loss, Z)  # B N k k
    K = logit_kernel(model, chain)  # B k N k N
    # M[i a, j b] = sum_cd C_i[c, a] K[c d i j] C_j[d, b]
    M = torch.einsum("bjde,biajd->biaje", C, torch.einsum("bica,bcdij->biajd", C, K)).reshape(Bsz, N * k, N * k)
    system = torch.eye(N * k, dtype=Z.dtype, device=Z.device) + dt[:, None, None] * M
    # a failed factorization (non-finite logits after a bad step) yields NaN steps, which the caller rejects
    chol, info = torch.linalg.cholesky_ex(system)
    if bool((info != 0).any()):
        chol = torch.where((info == 0)[:, None, None], chol, torch.full_like(chol, math.nan))
    d = dt[:, None, None]

    def solve(rho: torch.Tensor) -> list[torch.Tensor]:  # -dt (I + dt J^T S J)^{-1} J^T rho
        v = torch.einsum("bica,bci->bia", C, torch.einsum("bcdij,bdj->bci", K, rho)).reshape(Bsz, N * k, 1)
        y = torch.cholesky_solve(v, chol).reshape(Bsz, N, k)
        return [-d * x for x in model.backward(chain, rho - d * torch.einsum("bica,bia->bci", C, y))]

    step = solve(r)
    if geodesic:
        P2 = second_order_logits(model, step)
        SP2 = torch.einsum("bica,bida,bdi->bci", C, C, P2)  # S P2, sample by sample
        step = [s + 0.5 * a for s, a in zip(step, solve(2.0 * SP2))]
    return step


class PathSimulator(Simulator):
    """A :class:`Simulator` with the path-following step and per-run freezing: runs whose ``active`` flag is False
    are not updated (so a batch can stop each run at its own terminal point and still be deterministic per run).

    Runs on a plateau (see the module docstring) switch to linearly implicit Euler steps until every sample is
    classified correctly; ``plateau=False`` keeps the explicit path step throughout (the previous rule).
    ``plateau_steps`` counts, per run, the implicit steps tried (accepted or not); a run gets at most
    ``plateau_budget`` of them (each costs several explicit steps), then continues with explicit steps.

    ``eta`` is taken from ``optimizer.lr`` when ``optimizer.name`` is ``"path"``-like; the other optimizers
    (``gd``, ``ngd``) are delegated to the core :class:`Simulator` unchanged.
    """

    def __init__(self, model, loss, eta: float = 0.01, optimizer=None, path: bool = True, plateau: bool = True,
                 window: int = 50, flat_tol: float = 0.05, stiff_ratio: float = 0.1, exit_ratio: float = 20.0,
                 plateau_budget: int = 600) -> None:
        super().__init__(model, loss, optimizer)
        self.eta = float(eta)
        self.path = bool(path)
        self.curvature = True
        self.curvature_factor = 20.0
        self.plateau = bool(plateau)
        self.window, self.flat_tol, self.stiff_ratio = int(window), float(flat_tol), float(stiff_ratio)
        self.exit_ratio = float(exit_ratio)
        self.plateau_budget = int(plateau_budget)
        self.geodesic = True
        self.grow, self.shrink = 1.5, 0.25
        dev, B = model.factors[0].device, model.batch
        self.active = torch.ones(B, dtype=torch.bool, device=dev)
        self.stiff = torch.zeros(B, dtype=torch.bool, device=dev)  # on a plateau: implicit steps
        self.dt = torch.zeros(B, dtype=torch.float64, device=dev)  # their flow-time step
        self.ref_log_loss = torch.full((B,), math.inf, dtype=torch.float64, device=dev)  # at the last window mark
        self.plateau_steps = torch.zeros(B, dtype=torch.long, device=dev)

    def update(self) -> None:
        if not self.path:
            before = [F.clone() for F in self.model.factors] if not bool(self.active.all()) else None
            super().update()
            if before is not None:  # frozen runs keep their factors
                for F, F0 in zip(self.model.factors, before):
                    F[~self.active] = F0[~self.active]
            return
        model = self.model
        chain = model.forward_chain()
        Z = chain[-1]
        G, log_scale = self.loss.scaled_gradient(Z)
        grads = model.backward(chain, G)
        gnorm = torch.sqrt(sum(torch.linalg.vector_norm(g, dim=(1, 2)) ** 2 for g in grads)).clamp_min(1e-300)
        tnorm = torch.sqrt(model.squared_norm())
        relative = self.eta * tnorm
        length = relative
        if self.curvature:
            # dZ per unit step along -g/||g||, and the loss's first- and second-order change along it, both in the
            # scaled units of G (off-label G_ci = w_i p_ci / sigma, sigma = exp(log_scale)), so their ratio is exact
            # however small the loss. Second order: sum_i w_i Var_{p_i}(dz_i), written relative to the label entry
            # (Var is shift-invariant) so that nothing cancels when p_i is nearly one-hot. The step keeps the
            # quadratic term below 10*eta of the linear one.
            T = tangent_logits(model, chain, grads) / gnorm[:, None, None]
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
            implicit = self._plateau_modes(Z, length, relative, log_scale + torch.log(gnorm))
        length = torch.where(self.active & ~implicit, length, torch.zeros_like(length))
        scale = (length / gnorm)[:, None, None]
        for F, g in zip(model.factors, grads):
            F.addcmul_(g, scale, value=-1.0)
        if bool(implicit.any()):
            self._implicit_steps(implicit.nonzero().squeeze(1), [c[implicit] for c in chain], tnorm[implicit])
        self.step += 1

    def _plateau_modes(self, Z, length, relative, log_gnorm) -> torch.Tensor:
        """Enter/leave plateau mode per run; returns which runs take an implicit step now."""
        y = self.loss.labels.expand(Z.shape[0], 1, -1)
        margin = (Z.gather(1, y).squeeze(1) - Z.scatter(1, y, -math.inf).amax(dim=1)).amin(dim=1)
        log_loss = self.loss.log_loss(Z)
        # leave plateau mode once the explicit step covers at least 1/exit_ratio of the implicit step's flow time
        # (it costs about that much less), or before the loss could underflow
        dt_explicit = length * torch.exp(-log_gnorm)
        self.stiff &= (dt_explicit * self.exit_ratio < self.dt) & (log_loss > -100.0)
        self.stiff &= self.plateau_steps < self.plateau_budget  # each costs ~5-10 explicit steps: bounded per run
        if self.step % self.window == 0:
            enter = (~self.stiff & self.active & (margin <= 0) & (length < self.stiff_ratio * relative)
                     & (self.plateau_steps < self.plateau_budget)
                     & (self.ref_log_loss - log_loss < self.flat_tol))
            # start from the flow time of the explicit step it replaces
            self.dt = torch.where(enter, dt_explicit * self.exit_ratio * 2, self.dt)
            self.stiff |= enter
            self.ref_log_loss = log_loss
        return self.stiff & self.active

    def _implicit_steps(self, idx: torch.Tensor, chain: list[torch.Tensor], tnorm: torch.Tensor) -> None:
        from implicit_geometry.models.ufm import DeepUFM

        sub = DeepUFM([F[idx] for F in self.model.factors])
        dt = self.dt[idx]
        old = self.loss.log_loss(chain[-1])
        steps = implicit_euler_step(sub, self.loss, chain, dt, geodesic=self.geodesic)
        size = torch.sqrt(sum(torch.linalg.vector_norm(s, dim=(1, 2)) ** 2 for s in steps)).clamp_min(1e-300)
        fac = torch.clamp(self.eta * tnorm / size, max=1.0)
        for F, s in zip(sub.factors, steps):
            F.addcmul_(s, fac[:, None, None])
        new = self.loss.log_loss(sub.logits())
        accept = torch.isfinite(new) & (new <= old)
        # accepted: grow dt by 1.5 (or shrink it to the capped length); rejected: stay, dt / 4
        self.dt[idx] = torch.where(accept, dt * torch.where(fac < 1, fac, torch.full_like(fac, self.grow)), dt * self.shrink)
        keep = accept[:, None, None]
        for F, Fs in zip(self.model.factors, sub.factors):
            F[idx] = torch.where(keep, Fs, F[idx])
        self.plateau_steps[idx] += 1

    def state_dict(self):
        state = super().state_dict()
        for name in ("active", "stiff", "dt", "ref_log_loss", "plateau_steps"):
            state[name] = getattr(self, name).cpu().clone()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        dev = self.model.factors[0].device
        self.active = state["active"].to(dev).clone()
        for name in ("stiff", "dt", "ref_log_loss", "plateau_steps"):
            if name in state:  # checkpoints written before plateau mode existed
                setattr(self, name, state[name].to(dev).clone())
