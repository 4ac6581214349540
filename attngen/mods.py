"""The score-mod library.  A score mod rewrites the scaled logit ``score`` (= scale · q·k)
before masking; each factory returns a :class:`ScoreMod` whose ``repr`` is the call itself."""
from __future__ import annotations

import math

from . import expr as E
from .expr import h, kv_idx, q_pos, score
from .spec import ScoreMod


def alibi(num_heads: int) -> ScoreMod:
    """ALiBi (Press et al.): ``score + m_h · (kv_idx − q_pos)`` with slopes ``m_h = 2^(−8(h+1)/H)``
    (the geometric sequence of the paper for a power-of-two head count)."""
    if not (isinstance(num_heads, int) and num_heads >= 1):
        raise ValueError(f"alibi.num_heads: must be an int >= 1, got {num_heads!r}")
    slope = E.exp2(-8.0 * (h + 1) / float(num_heads))
    return ScoreMod(score + slope * (kv_idx - q_pos), f"alibi({num_heads})")


def softcap(cap: float) -> ScoreMod:
    """Logit soft-capping (Gemma 2, Grok): ``cap · tanh(score / cap)``."""
    if not (isinstance(cap, (int, float)) and math.isfinite(cap) and cap > 0):
        raise ValueError(f"softcap.cap: must be a positive finite number, got {cap!r}")
    cap = float(cap)
    return ScoreMod(cap * E.tanh(score / cap), f"softcap({cap!r})")


REL_BIAS = "rel_bias"


def relative_bias(max_distance: int) -> ScoreMod:
    """A learned bias per head and clipped relative distance (T5-style table without the log
    buckets): ``score + rel_bias[h, clamp(kv_idx − q_pos, −D, D) + D]`` with the runtime tensor
    ``rel_bias float32 [heads, 2D + 1]``."""
    if not (isinstance(max_distance, int) and max_distance >= 1):
        raise ValueError(f"relative_bias.max_distance: must be an int >= 1, got {max_distance!r}")
    table = E.Tensor(REL_BIAS, ("heads", 2 * max_distance + 1), "float32", "normal")
    rel = E.clamp(kv_idx - q_pos, -max_distance, max_distance) + max_distance
    return ScoreMod(score + table[h, rel], f"relative_bias({max_distance})")


def temperature(t: float) -> ScoreMod:
    """Divide the logits by a temperature ``t`` (t < 1 sharpens)."""
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"temperature.t: must be a positive finite number, got {t!r}")
    return ScoreMod(score / float(t), f"temperature({float(t)!r})")


LIBRARY = {f.__name__: f for f in (alibi, softcap, relative_bias, temperature)}
