"""A user-defined spec: `attngen check examples/custom_mask.py` builds and validates it.

Causal attention over every other key plus the four most recent ones, with a bias that
prefers nearby keys.  Masks and score mods are traced from plain functions: use &, |, ~ and
attngen.expr.where instead of and, or, not and if.
"""
import attngen
from attngen import Mask, ScoreMod
from attngen.expr import q_pos


def strided_recent(b, h, q_idx, kv_idx):
    # q_pos = q_idx + kv_len - q_len: the query's absolute position (bottom-right aligned)
    return (kv_idx <= q_pos) & ((kv_idx % 2 == 0) | (q_pos - kv_idx < 4))


def distance_bias(score, b, h, q_idx, kv_idx):
    return score - 0.01 * (q_pos - kv_idx)


spec = attngen.Attention(num_heads=4, num_kv_heads=2, head_dim=64,
                         mask=Mask.from_fn(strided_recent), score_mod=ScoreMod.from_fn(distance_bias))
