"""Hadamard (spectral) initialization of the (deep) UFM: the construction that diagonalizes the softmax.

K classes with K a power of two, Sylvester basis ``Q = Had_K / sqrt K`` (symmetric, orthogonal, first column
``1/sqrt K``) and Walsh characters ``chi = sqrt K Q`` (``chi[i, k] = (-1)^popcount(i & k)``). A logit matrix
``Z = Q diag(a) Q^T`` has ``Z[k, j]`` depending only on ``k XOR j``, so its column-wise softmax is again
``Q diag(b) Q^T``: the cross-entropy gradient is diagonal in the same basis, the singular vectors never move and
only the K numbers ``a`` evolve (see :mod:`implicit_geometry.dynamics.reduced`).

Construction (depth L counts the weight matrices, L + 1 factors; n samples per class, N = nK columns, classes in
blocks ``0..0, 1..1, ...``), with ``R_1..R_L`` (d x K, orthonormal columns, d >= K) and ``V = Q kron 1_n/sqrt n``::

    W_L = Q diag(sigma) R_L^T,   W_l = R_{l+1} diag(sigma) R_l^T,   H = R_1 diag(sigma) V^T

Every factor has the same singular values ``sigma`` (balanced: ``W_l^T W_l = W_{l-1} W_{l-1}^T``, ``W_1^T W_1 = H H^T``,
which gradient descent then keeps). ``a`` is the spectrum of the *class-level* logits ``Zbar = Q diag(a) Q^T``
(every sample of class j has logit column ``Zbar[:, j]``), so ``sigma = (sqrt(n) a)^(1/(L+1))``: with n > 1 the
columns of H are repeated n times per class and the full K x N logit matrix has singular values ``sqrt(n) a``.
For n = 1 this is ``W = Q diag(s) R^T``, ``H = R diag(s) Q^T``, ``a = s^2`` of the two-layer papers.

>>> import numpy as np
>>> init = hadamard_init([0.0, 1.0, 2.0, 3.0], depth=2, dim=5)
>>> Z = init.model.logits()[0].numpy()
>>> np.allclose(init.Q.T @ Z @ init.Q, np.diag([0.0, 1.0, 2.0, 3.0]))
True
>>> hadamard_basis(12)
Traceback (most recent call last):
...
implicit_geometry._validation.InvalidParameterError: num_classes must be a power of two (2, 4, 8, 16, 32, ...) (got 12): only the Sylvester-Walsh basis diagonalizes the softmax (Z[k, j] depends on k XOR j); other Hadamard matrices such as Paley's K = 12 do not
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from implicit_geometry._validation import InvalidParameterError, check_float, check_int
from implicit_geometry.models.ufm import DeepUFM

REDUCTIONS = ("sum", "mean")


def check_power_of_two(num_classes: Any, name: str = "num_classes") -> int:
    """K as an int if it is a power of two >= 2, else :class:`InvalidParameterError` saying why and which K work."""
    k = check_int(name, num_classes, minimum=2)
    if k & (k - 1):
        raise InvalidParameterError(
            f"{name} must be a power of two (2, 4, 8, 16, 32, ...) (got {k}): only the Sylvester-Walsh basis "
            "diagonalizes the softmax (Z[k, j] depends on k XOR j); other Hadamard matrices such as Paley's K = 12 do not"
        )
    return k


def walsh_characters(num_classes: int) -> np.ndarray:
    """``chi[i, k] = (-1)^popcount(i & k)`` (K x K, entries +-1, symmetric, ``chi @ chi = K I``).

    >>> walsh_characters(4)
    array([[ 1,  1,  1,  1],
           [ 1, -1,  1, -1],
           [ 1,  1, -1, -1],
           [ 1, -1, -1,  1]])
    """
    k = check_power_of_two(num_classes)
    idx = np.arange(k)
    bits = np.bitwise_and(idx[:, None], idx[None, :])
    parity = np.zeros_like(bits)
    while np.any(bits):
        parity ^= bits & 1
        bits >>= 1
    return (1 - 2 * parity).astype(np.int64)


def hadamard_basis(num_classes: int) -> np.ndarray:
    """``Q = chi / sqrt K`` (float64, symmetric orthogonal; column 0 is ``1/sqrt K``, the all-ones mode)."""
    return walsh_characters(num_classes) / np.sqrt(num_classes)


def check_spectrum(a: Any, num_classes: int | None = None, name: str = "singular_values") -> np.ndarray:
    """Logit singular values as a (B, K) float64 array (a single vector becomes B = 1): finite, >= 0, K = 2^m."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 2:
        raise InvalidParameterError(f"{name} must be a vector of K values or a (batch, K) array (got shape {arr.shape})")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise InvalidParameterError(f"{name} must be finite and >= 0 (got min {float(np.nanmin(arr)):g})")
    check_power_of_two(arr.shape[1], "number of singular values K")
    if num_classes is not None and arr.shape[1] != num_classes:
        raise InvalidParameterError(f"{name} must have {num_classes} entries per row (got {arr.shape[1]})")
    return arr


def sample_singular_values(
    num_classes: int,
    batch: int = 1,
    *,
    low: float = 0.0,
    high: float = 1.0,
    l1_norm: float | None = 1.0,
    zero_modes: int = 0,
    seed: int = 0,
) -> np.ndarray:
    """Random initial spectra (B, K): ``a_0 = 0`` (the all-ones mode carries no information and never moves),
    ``a_1..a_{K-1}`` uniform in ``[low, high]``, then rescaled to ``sum a = l1_norm`` (None: no rescaling).
    ``zero_modes`` of the K-1 informative modes (chosen at random per row) are set to exactly 0: such initial
    conditions start on an invariant face (spurious critical points).

    >>> a = sample_singular_values(8, 3, l1_norm=2.0, seed=1)
    >>> a.shape, bool(np.allclose(a.sum(1), 2.0)), bool(np.all(a[:, 0] == 0))
    ((3, 8), True, True)
    """
    k = check_power_of_two(num_classes)
    B = check_int("batch", batch, minimum=1)
    lo = check_float("low", low, minimum=0.0)
    hi = check_float("high", high, minimum=lo, strict_min=True)
    z = check_int("zero_modes", zero_modes, minimum=0, maximum=k - 2)
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    a = np.zeros((B, k))
    a[:, 1:] = rng.uniform(lo, hi, size=(B, k - 1))
    if z:
        for row in a:
            row[1 + rng.choice(k - 1, size=z, replace=False)] = 0.0
    if l1_norm is not None:
        norm = check_float("l1_norm", l1_norm, minimum=0.0, strict_min=True)
        total = a.sum(1, keepdims=True)
        if np.any(total <= 0):
            raise InvalidParameterError(f"low, high must leave a positive sum to rescale (got low={lo}, high={hi})")
        a *= norm / total
    return a


def hadamard_labels(num_classes: int, samples_per_class: int = 1) -> np.ndarray:
    """Labels in class blocks: ``[0]*n + [1]*n + ...`` (the column order the construction assumes)."""
    return np.repeat(np.arange(num_classes), samples_per_class)


def random_orthonormal(dim: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """A d x r matrix with orthonormal columns (QR of a Gaussian, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, rank)))
    return q * np.sign(np.diag(r))


@dataclass
class HadamardInit:
    """A Hadamard-initialized batch of (deep) UFMs and what it was built from.

    ``model``: the :class:`DeepUFM` (B runs); ``labels``: class of each column; ``a``: class-logit spectra (B, K);
    ``sigma``: every factor's singular values (B, K); ``Q``: the basis; ``bases``: the R_l (d x K each)."""

    model: DeepUFM
    labels: np.ndarray
    a: np.ndarray
    sigma: np.ndarray
    Q: np.ndarray
    bases: list[np.ndarray]
    samples_per_class: int

    @property
    def num_classes(self) -> int:
        return self.a.shape[1]


def hadamard_init(
    singular_values: Any,
    *,
    depth: int = 1,
    dim: int | None = None,
    samples_per_class: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> HadamardInit:
    """Balanced Hadamard initialization with class-logit spectrum ``a`` (see the module docstring).

    Args:
        singular_values: a (K,) or (B, K) array of ``a >= 0``; K must be a power of two. ``a_0`` (all-ones mode)
            is a constant shift of all logits and never moves; the papers start it at 0.
        depth: L, the number of weight matrices (L + 1 factors).
        dim: width d >= K (default K).
        samples_per_class: n; H has n identical columns per class.
        seed: seed of the random orthonormal R_l (shared by the batch).
    """
    a = check_spectrum(singular_values)
    B, k = a.shape
    L = check_int("depth", depth, minimum=1)
    d = k if dim is None else check_int("dim", dim, minimum=k)
    n = check_int("samples_per_class", samples_per_class, minimum=1)
    rng = np.random.default_rng(check_int("seed", seed, minimum=0))
    Q = hadamard_basis(k)
    bases = [random_orthonormal(d, k, rng) for _ in range(L)]
    sigma = (np.sqrt(n) * a) ** (1.0 / (L + 1))
    V = np.repeat(Q, n, axis=0) / np.sqrt(n)  # N x K, orthonormal columns: Q with each row repeated n times
    S = sigma[:, None, :]  # scale the columns of the left factor

    factors = [(bases[0] * S) @ V.T]  # H = R_1 diag(sigma) V^T
    for l in range(1, L):
        factors.append((bases[l] * S) @ bases[l - 1].T)
    factors.append((Q * S) @ bases[L - 1].T)
    model = DeepUFM([torch.as_tensor(F, dtype=dtype, device=device).contiguous() for F in factors])
    return HadamardInit(model, hadamard_labels(k, n), a, sigma, Q, bases, n)


def class_logits(Z: torch.Tensor, samples_per_class: int) -> torch.Tensor:
    """Class-mean logits ``Zbar`` (B x K x K) of logits Z (B x K x nK) in class blocks."""
    B, k, N = Z.shape
    return Z.reshape(B, k, k, samples_per_class).mean(-1) if samples_per_class > 1 else Z


def spectral_coordinates(Zbar: Any, Q: np.ndarray) -> np.ndarray:
    """``Q^T Zbar Q`` (B x K x K, float64): diagonal, equal to ``diag(a)``, for as long as the vectors stay frozen."""
    Z = Zbar.detach().cpu().double().numpy() if hasattr(Zbar, "detach") else np.asarray(Zbar, np.float64)
    return np.einsum("ik,bij,jl->bkl", Q, Z, Q)
