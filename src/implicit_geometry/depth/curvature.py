"""Derivatives of a deep UFM's loss beyond the gradient: directional (forward-mode) logits, the CE Hessian in the
logits, the logit kernel ``J J^T``, exact Hessian-vector products, and the Gauss-Newton system that preconditions
implicit steps. Pure functions on a batched :class:`~implicit_geometry.models.ufm.DeepUFM` (every quantity per run,
so a run gives the same bits alone or batched with others).

Notation: factors ``F_0 = H, F_1, ..., F_L``, chain ``P_l = F_l ... F_0`` (``model.forward_chain()``), logits
``Z = P_L``, ``J`` the Jacobian of the logits in the parameters. A "vector" in parameter space is a list with one
tensor per factor.
"""

from __future__ import annotations

import torch

Params = list[torch.Tensor]


def param_dot(x: Params, y: Params) -> torch.Tensor:
    """Per-run inner product ``sum_l <x_l, y_l>`` (B,)."""
    return sum((a * b).sum(dim=(1, 2)) for a, b in zip(x, y))


def param_norm(x: Params) -> torch.Tensor:
    """Per-run Euclidean norm (B,)."""
    return torch.sqrt(sum(torch.linalg.vector_norm(a, dim=(1, 2)) ** 2 for a in x))


def directional_chain(model, chain: list[torch.Tensor], v: Params) -> list[torch.Tensor]:
    """Forward-mode derivative of every partial product along ``v``: ``T_0 = v_0``, ``T_l = F_l T_{l-1} + v_l P_{l-1}``
    (``T_L = J v``, the first-order change of the logits)."""
    T = [v[0]]
    for l in range(1, len(model.factors)):
        T.append(model.factors[l] @ T[-1] + v[l] @ chain[l - 1])
    return T


def tangent_logits(model, chain: list[torch.Tensor], grads: Params) -> torch.Tensor:
    """``dZ/dt`` under gradient flow ``dtheta/dt = -grads``: the forward-mode derivative of ``Z`` (B x k x N)."""
    return directional_chain(model, chain, [-g for g in grads])[-1]


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


def logit_hessian_apply(C: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``S T`` sample by sample (``S_i = C_i C_i^T`` the CE Hessian in the logits; T is B x k x N)."""
    return torch.einsum("bica,bida,bdi->bci", C, C, T)


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


def hessian_vector_product(model, chain: list[torch.Tensor], grad_logits: torch.Tensor, C: torch.Tensor,
                           v: Params) -> Params:
    """The exact Hessian of the loss times ``v``, per run: ``J^T S J v`` (Gauss-Newton part) plus the residual part
    ``(d/de) J(theta + e v)^T g`` (g = ``grad_logits``, the loss gradient in the logits; C from :func:`softmax_root`).

    Forward-over-reverse by hand: the backward recursion ``D_L = g``, ``D_{l-1} = F_l^T D_l``, ``grad_l = D_l P_{l-1}^T``
    differentiated along v (``dD_L = S J v``, ``dD_{l-1} = F_l^T dD_l + v_l^T D_l``,
    ``dgrad_l = dD_l P_{l-1}^T + D_l T_{l-1}^T``), so one forward-mode and one backward pass, no autograd graph.
    The residual part matters on saddle plateaus, where misclassified samples keep O(1) gradients while the
    factors are large: there the loss is far from its Gauss-Newton model."""
    F = model.factors
    T = directional_chain(model, chain, v)
    D, dD = grad_logits, logit_hessian_apply(C, T[-1])
    out: Params = [None] * len(F)  # type: ignore[list-item]
    for l in range(len(F) - 1, 0, -1):
        out[l] = dD @ chain[l - 1].transpose(1, 2) + D @ T[l - 1].transpose(1, 2)
        dD = F[l].transpose(1, 2) @ dD + v[l].transpose(1, 2) @ D
        D = F[l].transpose(1, 2) @ D
    out[0] = dD
    return out


class GaussNewtonSystem:
    """``I + dt J^T S J`` at the current factors, factorized once per run through the logit kernel: by the
    push-through (Woodbury) identity ``(I + dt J^T C C^T J)^{-1} = I - dt J^T C (I + dt C^T J J^T C)^{-1} C^T J``,
    one Cholesky factorization of size ``N k`` per run, whatever the number of parameters.

    ``failed`` marks runs whose factorization broke down (non-finite logits); :meth:`inverse` gives NaN there."""

    def __init__(self, model, loss, chain: list[torch.Tensor], dt: torch.Tensor) -> None:
        self.model, self.chain, self.dt = model, chain, dt
        Z = chain[-1]
        Bsz, k, N = Z.shape
        self.C = softmax_root(loss, Z)  # B N k k
        K = logit_kernel(model, chain)  # B k k N N
        # M[i a, j b] = sum_cd C_i[c, a] K[c d i j] C_j[d, b]
        M = torch.einsum("bjde,biajd->biaje", self.C, torch.einsum("bica,bcdij->biajd", self.C, K)).reshape(Bsz, N * k, N * k)
        system = torch.eye(N * k, dtype=Z.dtype, device=Z.device) + dt[:, None, None] * M
        chol, info = torch.linalg.cholesky_ex(system)
        self.failed = info != 0
        if bool(self.failed.any()):
            chol = torch.where(self.failed[:, None, None], torch.full_like(chol, float("nan")), chol)
        self.chol = chol

    def inverse(self, v: Params) -> Params:
        """``(I + dt J^T S J)^{-1} v`` per run."""
        Bsz, k, N = self.chain[-1].shape
        Jv = directional_chain(self.model, self.chain, v)[-1]
        y = torch.cholesky_solve(torch.einsum("bica,bci->bia", self.C, Jv).reshape(Bsz, N * k, 1), self.chol)
        back = self.model.backward(self.chain, torch.einsum("bica,bia->bci", self.C, y.reshape(Bsz, N, k)))
        d = self.dt[:, None, None]
        return [x - d * w for x, w in zip(v, back)]
