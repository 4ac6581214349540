"""Small helpers shared by the reference modules (not part of the public API)."""
import numpy as np


def f64(x):
    """`x` as a float64 ndarray (every reference computes in float64)."""
    return np.asarray(x, np.float64)


def chunk_bounds(length, size):
    """Half-open ranges [start, end) of width `size` covering 0..length; the last may be short."""
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def swap(x):
    """Swap the last two axes (the matrix transpose of a batch of matrices)."""
    return np.swapaxes(x, -1, -2)


def unit_lower_inverse(lower):
    """(I + L)^{-1} for strictly lower-triangular L [..., n, n], by forward substitution.

    Row i of the inverse T satisfies T[i, :i] = -L[i, :i] @ T[:i, :i] and T[i, i] = 1.
    """
    n = lower.shape[-1]
    inverse = np.broadcast_to(np.eye(n), lower.shape).copy()
    for i in range(1, n):
        inverse[..., i, :i] = -np.einsum("...m,...mj->...j", lower[..., i, :i], inverse[..., :i, :i])
    return inverse


def online_softmax_result(acc, row_sum, row_max):
    """Final step of an online softmax: o = acc / l and lse = m + log l (natural log).

    acc [..., n, dv], row_sum l [..., n], row_max m [..., n] (finite wherever l > 0).
    Rows with l = 0 (no visible key) give o = 0 and lse = -inf.
    """
    empty = row_sum == 0
    safe_sum = np.where(empty, 1.0, row_sum)
    return acc / safe_sum[..., None], np.where(empty, -np.inf, row_max + np.log(safe_sum))
