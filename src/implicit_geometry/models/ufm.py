"""The (deep) unconstrained features model ``Z = W_L ... W_1 H``, batched over independent runs.

Depth L counts the weight matrices (L + 1 factors; L = 1 is the plain UFM ``Z = W H``). Every factor carries a
leading batch dimension B, so B independent runs (seeds, or configurations of equal shape) are one tensor
program. Factors are stored bottom-up: ``factors[0] = H`` (B x d x N), ``factors[l] = W_l`` (B x d x d for
l < L, B x k x d for l = L).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
            W = W @ F
        return W

    def forward_chain(self) -> list[torch.Tensor]:
        """Partial products ``[H, W_1 H, ..., W_L ... W_1 H]``; the last one is the logits Z (B x k x N)."""
        chain = [self.factors[0]]
        for F in self.factors[1:]:
            chain.append(F @ chain[-1])
        return chain

    def logits(self) -> torch.Tensor:
        return self.forward_chain()[-1]

    def backward(self, chain: list[torch.Tensor], G: torch.Tensor) -> list[torch.Tensor]:
        """Gradients of ``<G, Z>`` with respect to every factor (the pull-back of G through the product)."""
        grads: list[torch.Tensor] = [None] * len(self.factors)  # type: ignore[list-item]
        D = G
        for l in range(len(self.factors) - 1, 0, -1):
            grads[l] = D @ chain[l - 1].transpose(1, 2)
            D = self.factors[l].transpose(1, 2) @ D
        grads[0] = D
        return grads

    def squared_norm(self) -> torch.Tensor:
        """Per-run ``sum_l ||factor_l||_F^2`` (B,)."""
        return sum(torch.linalg.vector_norm(F, dim=(1, 2)) ** 2 for F in self.factors)

    def clone(self) -> DeepUFM:
        return DeepUFM([F.clone() for F in self.factors])
