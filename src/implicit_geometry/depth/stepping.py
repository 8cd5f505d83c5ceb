"""Path-following step sizes for deep UFMs trained from small initialization (any depth, no hand tuning).

Plain gradient descent with a step that suits depth 1 diverges at depth 5..10 (the sharpness of the loss grows
like the product of the factor norms), while a step small enough for depth 10 makes depth 1 crawl. The
``"path"`` optimizer of :class:`PathSimulator` instead moves along the normalized gradient ``-g/||g||`` by

    h = eta * ||theta|| / max(1, spread(Z)),    spread(Z) = max_i (max_c z_ci - min_c z_ci),

per run. Why this follows the gradient-flow *path* (only its time parametrization changes):

- near the origin (small logits) the loss is ``<dL/dZ(0), Z(theta)>`` to first order, homogeneous of degree
  L+1 in theta, so gradient-flow trajectories are scale-invariant there and a step that is a fixed fraction
  ``eta`` of ``||theta||`` resolves them equally well at every scale and every depth;
- once the logits are large, the softmax weights change when a sample's logits move by O(1), i.e. after a
  relative (angular) move of order ``1/spread``: dividing by the spread keeps each step below that scale (the
  same reason the core ``ngd`` caps its step by ``(norm_ref/||theta||)^L``), and makes the logits grow by about
  ``(L+1) eta`` per step, so reaching a margin m takes about ``m / ((L+1) eta)`` steps at any depth.

``eta`` (default 0.01) is the only knob; halving it must not change the reached solution (tested against plain
small-step gradient descent on small cases).
"""

from __future__ import annotations

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


class PathSimulator(Simulator):
    """A :class:`Simulator` with the path-following step ``h = eta ||theta|| / max(1, spread(Z))`` and per-run
    freezing: runs whose ``active`` flag is False are not updated (so a batch can stop each run at its own
    terminal point and still be deterministic per run).

    ``eta`` is taken from ``optimizer.lr`` when ``optimizer.name`` is ``"path"``-like; the other optimizers
    (``gd``, ``ngd``) are delegated to the core :class:`Simulator` unchanged.
    """

    def __init__(self, model, loss, eta: float = 0.01, optimizer=None, path: bool = True) -> None:
        super().__init__(model, loss, optimizer)
        self.eta = float(eta)
        self.path = bool(path)
        self.curvature = True
        self.curvature_factor = 20.0
        self.active = torch.ones(model.batch, dtype=torch.bool, device=model.factors[0].device)

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
        length = self.eta * tnorm
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
        length = torch.where(self.active, length, torch.zeros_like(length))
        scale = (length / gnorm)[:, None, None]
        for F, g in zip(model.factors, grads):
            F.addcmul_(g, scale, value=-1.0)
        self.step += 1

    def state_dict(self):
        state = super().state_dict()
        state["active"] = self.active.cpu().clone()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.active = state["active"].to(self.model.factors[0].device).clone()
