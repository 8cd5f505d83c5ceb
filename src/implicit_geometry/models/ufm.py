"""The (deep) unconstrained features model ``Z = W_L ... W_1 H``, batched over independent runs.

Depth L counts the weight matrices (L + 1 factors; L = 1 is the plain UFM ``Z = W H``). Every factor carries a
leading batch dimension B, so B independent runs (seeds, or configurations of equal shape) are one tensor
program. Factors are stored bottom-up: ``factors[0] = H`` (B x d x N), ``factors[l] = W_l`` (B x d x d for
l < L, B x k x d for l = L).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implicit_geometry._matmul import baddbmm, matmul
from implicit_geometry._validation import InvalidParameterError, check_float, check_int

# bytes of working memory per float64 parameter entry while training: the factors, their gradients, the optimizer's
# state and the forward chain (about one more d x N per layer) -- an estimate, used only to refuse the impossible
_WORKING_COPIES = 5


def available_memory(device: str | torch.device) -> float | None:
    """Bytes free for new tensors on ``device`` (CUDA: the driver's count; CPU: MemAvailable of /proc/meminfo), or None
    where that cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits_in_memory(*, batch: int, dim: int, num_samples: int, num_classes: int, depth: int, device: str | torch.device) -> None:
    """Refuse a UFM whose training would not fit in memory, with a one-line error, before anything is allocated
    (a failed allocation of terabytes would otherwise end in an allocator traceback)."""
    entries = batch * ((depth + 1) * dim * num_samples + num_classes * num_samples + (depth - 1) * dim * dim + num_classes * dim)
    need = 8.0 * _WORKING_COPIES * entries
    free = available_memory(device)
    if free is not None and need > free:
        raise InvalidParameterError(
            f"the UFM is too large for this machine: {batch} run(s) of dim {dim} x {num_samples} samples at depth {depth} need about "
            f"{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free (use fewer samples, a smaller dim, or fewer seeds)")


@dataclass
class DeepUFM:
    factors: list[torch.Tensor]

    @classmethod
    def random(
        cls,
        *,
        num_classes: int,
        num_samples: int,
        dim: int,
        depth: int = 1,
        batch: int = 1,
        init_std: float = 0.1,
        seeds: list[int] | None = None,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> DeepUFM:
        """Gaussian initialization with entries ``N(0, init_std^2)``; run b uses ``torch.Generator`` seed ``seeds[b]``
        (default ``0..B-1``), so a run's initialization does not depend on what else is in the batch."""
        k = check_int("num_classes", num_classes, minimum=2)
        n = check_int("num_samples", num_samples, minimum=1)
        d = check_int("dim", dim, minimum=1)
        L = check_int("depth", depth, minimum=1)
        B = check_int("batch", batch, minimum=1)
        std = check_float("init_std", init_std, minimum=0.0, strict_min=True)
        seeds = list(range(B)) if seeds is None else [check_int("seed", s, minimum=0) for s in seeds]
        if len(seeds) != B:
            raise ValueError(f"seeds must have one entry per run ({B}), got {len(seeds)}")
        check_fits_in_memory(batch=B, dim=d, num_samples=n, num_classes=k, depth=L, device=device)
        shapes = [(d, n)] + [(d, d)] * (L - 1) + [(k, d)]
        per_run = []
        for s in seeds:
            g = torch.Generator().manual_seed(s)
            per_run.append([torch.randn(shape, generator=g, dtype=torch.float64) * std for shape in shapes])
        factors = [torch.stack([run[i] for run in per_run]).to(dtype=dtype, device=device) for i in range(len(shapes))]
        return cls(factors)

    @property
    def depth(self) -> int:
        return len(self.factors) - 1

    @property
    def batch(self) -> int:
        return self.factors[0].shape[0]

    @property
    def H(self) -> torch.Tensor:
        return self.factors[0]

    def classifier(self) -> torch.Tensor:
        """End-to-end classifier ``W = W_L ... W_1`` (B x k x d), so that ``Z = W @ H``."""
        W = self.factors[-1]
        for F in reversed(self.factors[1:-1]):
            W = matmul(W, F)
        return W

    def chain(self) -> Chain:
        """The partial products at the current factors: logits, gradients (pull-backs) and directional derivatives
        (push-forwards) of the logits; see :class:`Chain`."""
        return Chain(self.factors)

    def logits(self) -> torch.Tensor:
        """``Z = W_L ... W_1 H`` (B x k x N), bit for bit ``self.chain().logits``."""
        return matmul(self.classifier(), self.factors[0])

    def squared_norm(self) -> torch.Tensor:
        """Per-run ``sum_l ||factor_l||_F^2`` (B,)."""
        return sum(torch.linalg.vector_norm(F, dim=(1, 2)) ** 2 for F in self.factors)

    def imbalance(self) -> list[torch.Tensor]:
        """``D_l = F_{l+1}^T F_{l+1} - F_l F_l^T`` for l = 0..L-1 (each B x d x d). Gradient flow on any loss of the
        logits conserves every ``D_l`` (its velocity is orthogonal to their gradients), so their drift measures how
        closely a discrete run followed it; balanced factors (all ``D_l = 0``) stay balanced.

        >>> m = DeepUFM([torch.eye(2)[None] * 2.0, torch.eye(2)[None] * 2.0])
        >>> [float(D.abs().max()) for D in m.imbalance()]
        [0.0]
        """
        F = self.factors
        return [F[l + 1].transpose(1, 2) @ F[l + 1] - F[l] @ F[l].transpose(1, 2) for l in range(len(F) - 1)]

    def clone(self) -> DeepUFM:
        return DeepUFM([F.clone() for F in self.factors])


class Chain:
    """The partial products of a deep UFM at one point, for derivatives of its logits.

    With factors ``F_0 = H, F_1, ..., F_L`` the logits are ``Z = A_0 H`` where ``A_l = F_L ... F_{l+1}`` (k x d; ``A_L
    = I``) are the *left* products. The gradient of ``<G, Z>`` (the pull-back ``J^T G``, :meth:`pullback`) and the
    first-order change of Z along a parameter direction (the push-forward ``J v``, :meth:`push`) are computed from them
    and from k-column products ``F_l ... F_1 H G^T`` (d x k), so every matrix product in a pass costs ``k d^2`` flops
    (``d k N`` at the ends): the right products ``P_l = F_l ... F_0`` (d x N, :meth:`right`) cost ``d^2 N`` each, and
    a classification task has at least one sample per class (N >= k), so this is the cheaper orientation -- about 4x
    at the paper's depth setting (d = 100, k = 10, N = 50).

    >>> import torch
    >>> m = DeepUFM.random(num_classes=3, num_samples=4, dim=5, depth=3, batch=2, init_std=0.5)
    >>> c = m.chain()
    >>> bool(torch.equal(c.logits, m.logits()))
    True
    >>> v = [torch.randn_like(F) for F in m.factors]
    >>> eps = 1e-6
    >>> moved = DeepUFM([F + eps * u for F, u in zip(m.factors, v)]).logits()
    >>> bool(torch.allclose((moved - c.logits) / eps, c.push(v), atol=1e-4))
    True
    """

    def __init__(self, factors: list[torch.Tensor]) -> None:
        self.factors = factors
        L = len(factors) - 1
        A = factors[L]
        left = [A]  # A_{L-1}, then A_{L-2}, ..., A_0
        for F in reversed(factors[1:-1]):
            A = matmul(A, F)
            left.append(A)
        self.left: list[torch.Tensor] = left[::-1]  # left[l] = A_l for l < L
        self.logits: torch.Tensor = matmul(A, factors[0])
        self._right: list[torch.Tensor] | None = None

    @property
    def depth(self) -> int:
        return len(self.factors) - 1

    def right(self) -> list[torch.Tensor]:
        """The right products ``[P_0, ..., P_{L-1}]``, ``P_l = F_l ... F_1 H`` (d x N; computed once, on demand)."""
        if self._right is None:
            P = [self.factors[0]]
            for F in self.factors[1:-1]:
                P.append(matmul(F, P[-1]))
            self._right = P
        return self._right

    def pullback(self, G: torch.Tensor) -> list[torch.Tensor]:
        """Gradients of ``<G, Z>`` with respect to every factor: ``A_l^T G P_{l-1}^T``, with ``G P_{l-1}^T`` carried up
        as the d x k products ``R_l = F_l R_{l-1}``, ``R_0 = H G^T``."""
        L, F = self.depth, self.factors
        grads: list[torch.Tensor] = [matmul(self.left[0].transpose(1, 2), G)]
        R = matmul(F[0], G.transpose(1, 2))
        for l in range(1, L):
            grads.append(matmul(self.left[l].transpose(1, 2), R.transpose(1, 2)))
            R = matmul(F[l], R)
        grads.append(R.transpose(1, 2))
        return grads

    def push(self, v: list[torch.Tensor]) -> torch.Tensor:
        """The first-order change of the logits along ``v`` (one tensor per factor), ``J v = sum_l A_l v_l P_{l-1}``,
        evaluated Horner-fashion from the top: ``Y <- Y F_l + A_l v_l`` (k x d), then ``Y H + A_0 v_0``."""
        return self.push_with_partials(v)[0]

    def push_with_partials(self, v: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """:meth:`push`, and the derivatives of the left products along ``v`` that its Horner steps produce:
        ``dA_l = sum_{m > l} d(F_L ... F_{l+1})/dF_m v_m`` (k x d, ``dA_{L-1} = v_L``), as ``[dA_0, ..., dA_{L-1}]``."""
        F = self.factors
        Y = v[-1]
        partials = [Y]
        for l in range(self.depth - 1, 0, -1):
            Y = baddbmm(matmul(self.left[l], v[l]), Y, F[l])
            partials.append(Y)
        return baddbmm(matmul(self.left[0], v[0]), Y, F[0]), partials[::-1]

