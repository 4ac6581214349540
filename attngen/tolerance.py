"""Tolerances, stated once (methods.md §6): a kernel's output against the float64 reference
computed from the same (already rounded) inputs.

``rel_rmse = ||x − ref||₂ / ||ref||₂`` and ``max_rel = max|x − ref| / max|ref|``.  Quantized
specs are compared with cosine similarity and relative L1 against exact attention instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Bound:
    rel_rmse: float
    max_rel: float


# kernel input dtype -> bound (fp32 accumulation everywhere)
BY_DTYPE = {
    "float32": Bound(1e-5, 1e-4),
    "float16": Bound(2e-3, 1e-2),
    "bfloat16": Bound(8e-3, 3e-2),
}
# SageAttention v1 (INT8 QK, FP16 PV) against exact attention
QUANT_COS_MIN = 0.999
QUANT_REL_L1_MAX = 0.03


def errors(x: np.ndarray, ref: np.ndarray) -> dict:
    """rel-RMSE, max-rel, cosine and rel-L1 of ``x`` against ``ref`` (finite entries only
    compare; a non-finite entry in ``x`` where ``ref`` is finite counts as an infinite error)."""
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    finite = np.isfinite(ref)
    if not np.array_equal(np.isfinite(x), finite) or not np.array_equal(x[~finite], ref[~finite]):
        return {"rel_rmse": np.inf, "max_rel": np.inf, "cos": -1.0, "rel_l1": np.inf}
    d, r = x[finite] - ref[finite], ref[finite]
    scale = max(np.linalg.norm(r), 1e-30)
    return {
        "rel_rmse": float(np.linalg.norm(d) / scale),
        "max_rel": float(np.abs(d).max(initial=0.0) / max(np.abs(r).max(initial=0.0), 1e-30)),
        "cos": float(np.dot(x[finite], r) / max(np.linalg.norm(x[finite]) * scale, 1e-30)),
        "rel_l1": float(np.abs(d).sum() / max(np.abs(r).sum(), 1e-30)),
    }


def passes(err: dict, dtype: str, quantized: bool = False) -> bool:
    if quantized:
        return err["cos"] >= QUANT_COS_MIN and err["rel_l1"] <= QUANT_REL_L1_MAX
    bound = BY_DTYPE[dtype]
    return err["rel_rmse"] <= bound.rel_rmse and err["max_rel"] <= bound.max_rel
