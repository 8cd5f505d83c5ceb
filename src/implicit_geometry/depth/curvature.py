"""Derivatives of a deep UFM's loss beyond the gradient: directional (forward-mode) logits, the CE Hessian in the
logits, the logit kernel ``J J^T``, exact Hessian-vector products, and the Gauss-Newton system that preconditions
implicit steps. Pure functions on a batched :class:`~implicit_geometry.models.ufm.DeepUFM` (every quantity per run,
so a run gives the same bits alone or batched with others).

Notation: factors ``F_0 = H, F_1, ..., F_L``, left products ``A_l = F_L ... F_{l+1}`` and right products
``P_l = F_l ... F_0`` (a :class:`~implicit_geometry.models.ufm.Chain`), logits ``Z = A_0 H``, ``J`` the Jacobian of
the logits in the parameters. A "vector" in parameter space is a list with one tensor per factor.
"""

from __future__ import annotations

import torch

from implicit_geometry._matmul import baddbmm, matmul
from implicit_geometry.models.ufm import Chain

Params = list[torch.Tensor]


def param_dot(x: Params, y: Params) -> torch.Tensor:
    """Per-run inner product ``sum_l <x_l, y_l>`` (B,)."""
    return sum((a * b).sum(dim=(1, 2)) for a, b in zip(x, y))


def param_norm(x: Params) -> torch.Tensor:
    """Per-run Euclidean norm (B,)."""
    return torch.sqrt(sum(torch.linalg.vector_norm(a, dim=(1, 2)) ** 2 for a in x))


def flatten(x: Params) -> torch.Tensor:
    """A parameter-space vector as one B x P tensor (the factors' entries in order): inner loops (conjugate
    gradients, line searches) then cost one tensor operation per update instead of one per factor."""
    return torch.cat([a.reshape(a.shape[0], -1) for a in x], dim=1)


def unflatten(flat: torch.Tensor, like: Params) -> Params:
    """Views of a B x P tensor shaped like the factors ``like`` (the inverse of :func:`flatten`; no copy)."""
    out, start = [], 0
    for a in like:
        size = a.shape[1] * a.shape[2]
        out.append(flat[:, start:start + size].view(flat.shape[0], a.shape[1], a.shape[2]))
        start += size
    return out


def tangent_logits(chain: Chain, grads: Params) -> torch.Tensor:
    """``dZ/dt`` under gradient flow ``dtheta/dt = -grads``: the push-forward of ``-grads`` (B x k x N)."""
    return chain.push([-g for g in grads])


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
    return _softmax_root_and_sqrt_p(loss, Z)[0]


def _softmax_root_and_sqrt_p(loss, Z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`softmax_root` and ``sqrt(p)`` (B x N x k), which :func:`reduced_softmax_root` needs too."""
    p = torch.softmax(loss.adjusted_logits(Z), dim=-2).transpose(-1, -2)  # B x N x k
    sp = p.sqrt()
    C = torch.diag_embed(sp) - p[..., :, None] * sp[..., None, :]
    scale = torch.exp(0.5 * loss._log_sample)[None, :, None, None]
    if loss._jac is not None:
        jac = loss._jac.expand(Z.shape[-2], Z.shape[-1]).transpose(0, 1)  # N x k
        C = C * jac[None, :, :, None]
    return C * scale, sp


def reduced_softmax_root(loss, Z: torch.Tensor) -> torch.Tensor:
    """A k x (k-1) square root of each sample's CE Hessian in the logits (B x N x k x (k-1)), ``C~_i C~_i^T =
    C_i C_i^T`` with ``C_i`` from :func:`softmax_root`.

    ``C_i sqrt(p_i) = 0`` (``sum p = 1``; row weights keep it), so ``C_i = C_i Hh`` restricted to ``sqrt(p_i)``'s
    orthogonal complement, spanned by columns 1..k-1 of the Householder reflection ``Hh = I - 2 h h^T / h^T h``,
    ``h = sqrt(p_i) + e_0``, which maps ``sqrt(p_i)`` to ``-e_0`` (``h_0 >= 1``: no cancellation). The Gauss-Newton
    system is then ``N (k-1)`` square instead of ``N k`` (its Cholesky ~0.73x the work at k = 10).

    >>> import torch
    >>> from implicit_geometry.train.losses import CrossEntropy
    >>> Z = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]], dtype=torch.float64)
    >>> loss = CrossEntropy([0, 1], 3)
    >>> C, R = softmax_root(loss, Z), reduced_softmax_root(loss, Z)
    >>> R.shape
    torch.Size([1, 2, 3, 2])
    >>> bool(torch.allclose(R @ R.mT, C @ C.mT, atol=1e-15))
    True
    """
    C, h = _softmax_root_and_sqrt_p(loss, Z)  # h = sqrt(p_i), made the Householder vector in place
    h[..., 0] += 1.0
    # C Hh = C - 2 (C h) h^T / h^T h with C h = C e_0 (C sqrt(p) = 0); column 0 of C Hh is -C sqrt(p) = 0: dropped
    coef = (2.0 / (h * h).sum(dim=-1, keepdim=True)) * h[..., 1:]  # B x N x (k-1)
    return C[..., 1:] - C[..., :, :1] * coef[..., None, :]


def logit_hessian_apply(C: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``S T`` sample by sample (``S_i = C_i C_i^T`` the CE Hessian in the logits; T is B x k x N)."""
    return matmul(C, matmul(C.transpose(-1, -2), T.transpose(1, 2)[..., None])).squeeze(-1).transpose(1, 2)


def hessian_vector_product(chain: Chain, grad_logits: torch.Tensor, C: torch.Tensor, v: Params) -> Params:
    """The exact Hessian of the loss times ``v``, per run: ``J^T S J v`` (Gauss-Newton part, ``u = S J v``) plus the
    residual part ``(d/de) J(theta + e v)^T g`` (g = ``grad_logits``, the loss gradient in the logits; C from
    :func:`softmax_root`).

    The gradient is ``A_l^T g P_{l-1}^T`` per factor; differentiated along v by hand (forward-over-reverse, no
    autograd graph): ``A_l^T Q_{l-1}^T + dA_l^T R_{l-1}^T`` with the d x k products ``R_l = P_l g^T`` and
    ``Q_l = P_l u^T + dP_l g^T`` carried up (``Q_l = F_l Q_{l-1} + v_l R_{l-1}``) and the left products' derivatives
    carried down (``dA_{l-1} = dA_l F_l + A_l v_l``), so every product costs ``k d^2``.
    The residual part matters on saddle plateaus, where misclassified samples keep O(1) gradients while the
    factors are large: there the loss is far from its Gauss-Newton model."""
    F, A, L = chain.factors, chain.left, chain.depth
    Jv, dA = chain.push_with_partials(v)  # the left products' derivatives dA_{l-1} = dA_l F_l + A_l v_l come with J v
    u = logit_hessian_apply(C, Jv)
    gT, k = grad_logits.transpose(1, 2), grad_logits.shape[1]
    out: Params = [baddbmm(matmul(A[0].transpose(1, 2), u), dA[0].transpose(1, 2), grad_logits)]
    # [Q_0 | R_0], d x 2k
    QR = torch.cat([baddbmm(matmul(F[0], u.transpose(1, 2)), v[0], gT), matmul(F[0], gT)], dim=2)
    for l in range(1, L):
        out.append(matmul(torch.cat([A[l], dA[l]], dim=1).transpose(1, 2), QR.transpose(1, 2)))
        R = QR[..., k:]
        QR = matmul(F[l], QR)  # [F_l Q | F_l R], then Q_l = F_l Q + v_l R
        QR[..., :k] += matmul(v[l], R)
    out.append(QR[..., :k].transpose(1, 2))
    return out


def scaled_logit_kernel(loss, chain: Chain, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``dt C^T J J^T C`` per run (B x N(k-1) x N(k-1)): the logit kernel ``J J^T`` seen through each sample's
    :func:`reduced_softmax_root` C (returned too, B x N x k x (k-1)). Its nonzero eigenvalues are those of the
    Gauss-Newton matrix ``dt J^T S J``; :class:`GaussNewtonSystem` factorizes ``I`` plus it, and the plateau's
    slow-manifold steps take its large eigenvalues as the stiff directions."""
    Z = chain.logits
    Bsz, k, N = Z.shape
    L = chain.depth
    C = reduced_softmax_root(loss, Z)  # B N k (k-1)
    r = C.shape[-1]
    # M[i a, j b] = sum_cd C_i[c, a] K[c d i j] C_j[d, b] with the logit kernel J J^T, K[c d i j] =
    # sum_l (A_l A_l^T)[c, d] (P_{l-1}^T P_{l-1})[i, j] (dZ = A_l dF_l P_{l-1}; A_L = I, P_{-1} = I), contracted in the order that needs no k x k x N x N permutation
    # of K: first C_i into the layers' k x k factors (Q), then the layers against row i of the N x N factors
    # (dt folded in there, the smallest place), then C_j sample pair by sample pair. Same flops as forming K;
    # about 3x faster at the paper's setting.
    eye_k = torch.eye(k, dtype=Z.dtype, device=Z.device).expand(Bsz, k, k)
    PA = torch.cat([matmul(A, A.transpose(1, 2)) for A in chain.left] + [eye_k], dim=2)  # B x k x (L+1) k: [c, (l, d)]
    Q = matmul(C.transpose(-1, -2), PA[:, None]).reshape(Bsz, N, r, L + 1, k).transpose(-1, -2)  # [i, a, d, l]
    grams = [matmul(P.transpose(1, 2), P) for P in chain.right()]
    eye_n = torch.eye(N, dtype=Z.dtype, device=Z.device).expand(Bsz, N, N)
    PB = torch.stack([eye_n] + grams, dim=3) * dt[:, None, None, None]  # B x N x N x (L+1): [i, j, l] (symmetric in i, j)
    Kc = matmul(PB, Q.reshape(Bsz, N, r * k, L + 1).transpose(-1, -2))  # [i, j, (a, d)] = dt sum_c C_i[c, a] K[c d i j]
    Y = matmul(Kc.reshape(Bsz, N, N, r, k), C[:, None])  # [i, j, a, b] = dt M[i a, j b]
    system = Y.permute(0, 1, 3, 2, 4).reshape(Bsz, N * r, N * r)
    return C, system


def stiff_kernel_spectrum(chain: Chain, C: torch.Tensor, cut: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalues above ``cut`` (descending) and eigenvectors of run 0's ``C^T J J^T C`` (see
    :func:`scaled_logit_kernel`, dt = 1; C its reduced softmax root), accurate where forming the matrix is not.

    Forming the kernel costs it every eigenvalue below ``~eps ||M|| sqrt(n)``: on the L = 10 saddle (``||M||`` up to
    5e14) a band of rounding noise reaches 1-2.5 and mixes with the smallest stiff directions (their lifted
    directions then have norms of 0.001-0.3 instead of 1; docs/depth.md). Here the kernel is never formed: its square
    root, one block per layer ``(S_a U_a^T C_i)[a, alpha] (S_p V_p^T)[b, i]`` from the SVDs ``A_l = U_a S_a W_a^T``
    and ``P_{l-1} = W_p S_p V_p^T``, is reduced to its singular values, whose squares are accurate to
    ``~eps sqrt(||M||) sigma``. Rows with ``S_a S_p < 1e-3 sqrt(cut)`` are left out: together they move no eigenvalue
    by more than ``~5e-3 cut`` (``|C| <= 1``), and they are ~90% of the rows at the paper's setting."""
    Cn = C[0]
    N, k, r = Cn.shape
    L = chain.depth
    eye_n = torch.eye(N, dtype=Cn.dtype, device=Cn.device)
    lefts = [chain.left[l][0] for l in range(L)] + [None]
    rights = [None] + [P[0] for P in chain.right()]
    floor = 1e-3 * cut ** 0.5
    blocks = []
    for A, P in zip(lefts, rights):
        if A is None:
            X, sa = Cn.permute(1, 0, 2), torch.ones(k, dtype=Cn.dtype, device=Cn.device)  # [a, i, alpha]
        else:
            Ua, sa, _ = torch.linalg.svd(A, full_matrices=False)
            X = sa[:, None, None] * torch.einsum("ca,icx->aix", Ua, Cn)
        if P is None:
            Yp, sp = eye_n, torch.ones(N, dtype=Cn.dtype, device=Cn.device)
        else:
            _, sp, Vt = torch.linalg.svd(P, full_matrices=False)
            Yp = sp[:, None] * Vt  # [b, i]
        a_idx, b_idx = torch.nonzero(sa[:, None] * sp[None, :] >= floor, as_tuple=True)
        blocks.append((X[a_idx] * Yp[b_idx][:, :, None]).reshape(-1, N * r))
    s, Vh = top_singular(torch.cat(blocks), cut ** 0.5)
    lam = s * s
    keep = lam > cut
    return lam[keep], Vh[keep].transpose(0, 1)


def top_singular(G: torch.Tensor, above: float, sketch: int = 64, power: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """The singular values of G (m x n) above ``above`` (descending, with at least the next one) and their right
    singular vectors (rows of Vh): a randomized range finder (``sketch`` Gaussian columns, a fixed seed, ``power``
    subspace iterations, re-orthonormalized each time), the sketch doubled until its smallest singular value falls
    below ``above / 4``; a plain SVD where the sketch would not be smaller than G.

    Every value comes from ``Q^T G`` with an orthonormal Q, so it is accurate to ~``eps ||G||`` absolute, as a full
    SVD's: what the sketch decides is only which subspace is resolved. At the paper's setting (514 x 450, ~48 values
    above 1 out of ~2e7) it takes ~5 ms instead of ~45 ms.

    >>> import torch
    >>> U, _ = torch.linalg.qr(torch.randn(300, 200, dtype=torch.float64))
    >>> V, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.float64))
    >>> s = torch.logspace(8, -4, 200, dtype=torch.float64)
    >>> top, Vh = top_singular(U @ torch.diag(s) @ V.T, 1.0)
    >>> n = int((s > 1).sum())
    >>> bool(torch.allclose(top[:n], s[:n], rtol=1e-9)), bool(torch.allclose((Vh[:n] @ V[:, :n]).abs().diagonal(), torch.ones(n, dtype=torch.float64)))
    (True, True)
    """
    m, n = G.shape
    p = sketch
    while 2 * p < min(m, n):
        gen = torch.Generator(device=G.device).manual_seed(0)
        Q = torch.linalg.qr(G @ torch.randn(n, p, generator=gen, dtype=G.dtype, device=G.device)).Q
        for _ in range(power):
            Q = torch.linalg.qr(G @ torch.linalg.qr(G.transpose(0, 1) @ Q).Q).Q
        _, s, Vh = torch.linalg.svd(Q.transpose(0, 1) @ G, full_matrices=False)
        if float(s[-1]) < 0.25 * above:
            return s, Vh
        p *= 2
    _, s, Vh = torch.linalg.svd(G, full_matrices=False)
    return s, Vh


class GaussNewtonSystem:
    """``I + dt J^T S J`` at the current factors, factorized once per run through the logit kernel: by the
    push-through (Woodbury) identity ``(I + dt J^T C C^T J)^{-1} = I - dt J^T C (I + dt C^T J J^T C)^{-1} C^T J``,
    one Cholesky factorization of size ``N k`` per run, whatever the number of parameters.

    ``failed`` marks runs whose factorization broke down (non-finite logits); :meth:`inverse` gives NaN there."""

    def __init__(self, loss, chain: Chain, dt: torch.Tensor) -> None:
        self.chain, self.dt = chain, dt
        self.C, system = scaled_logit_kernel(loss, chain, dt)
        system.diagonal(dim1=-2, dim2=-1).add_(1.0)
        chol, info = torch.linalg.cholesky_ex(system)
        self.failed = info != 0
        if bool(self.failed.any()):
            chol = torch.where(self.failed[:, None, None], torch.full_like(chol, float("nan")), chol)
        self.chol = chol

    def inverse(self, v: Params) -> Params:
        """``(I + dt J^T S J)^{-1} v`` per run."""
        back = self._kernel_part(v)
        d = self.dt[:, None, None]
        return [x - d * w for x, w in zip(v, back)]

    def inverse_flat(self, v: torch.Tensor, like: Params) -> torch.Tensor:
        """:meth:`inverse` on a flattened vector (B x P, see :func:`flatten`; ``like`` gives the factor shapes)."""
        return v - self.dt[:, None] * flatten(self._kernel_part(unflatten(v, like)))

    def _kernel_part(self, v: Params) -> Params:
        """``J^T C (I + dt C^T J J^T C)^{-1} C^T J v`` (the Woodbury correction, before the factor dt)."""
        Bsz, _, N = self.chain.logits.shape
        Jv = self.chain.push(v)
        r = self.C.shape[-1]
        rhs = matmul(self.C.transpose(-1, -2), Jv.transpose(1, 2)[..., None]).reshape(Bsz, N * r, 1)  # C_i^T (J v)_i
        # two triangular solves: a fraction of cholesky_solve's time at this size
        y = torch.linalg.solve_triangular(self.chol, rhs, upper=False)
        y = torch.linalg.solve_triangular(self.chol.transpose(-1, -2), y, upper=True)
        return self.chain.pullback(matmul(self.C, y.reshape(Bsz, N, r, 1)).squeeze(-1).transpose(1, 2))
