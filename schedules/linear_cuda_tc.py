"""Knobs of the tensor-core chunkwise linear-attention kernels (``templates/linear_chunk_tc.j2``,
and ``templates/linear_chunk_gla_tc.j2`` for gate "vector").

The template already is the schedule (explicit thread bindings, register fragments, PTX
builtins); what remains is the value block:

    value_block   value columns per CTA (16, 32, 64 or 128; divides head_dim_v).  A CTA of 4
                  warps scans one (batch, head, value block): smaller blocks give more CTAs
                  (B * H * head_dim_v / value_block) but recompute Q K^T once per block.
    staged_store  O through shared memory as 16-byte rows (templates/tc_store.j2) instead of
                  2-byte stores from the fragments (off by default until it has run on a GPU).

Gate "vector" (GLA, ``templates/linear_chunk_gla_tc.j2``): value_block is 64 or 128, the columns of
a CTA of value_block / 16 warps (64 columns per warp); 128 (8 warps) shares the gate scan, the
decayed keys and the diagonal tiles between two value halves and makes one wave of B * H CTAs.

Limits checked by ``validate``: the double-buffered Q/K/V tiles and the 16-bit state fit the
target's dynamic shared memory; the state accumulator (head_dim / 64 * value_block / 2 fp32 per
thread) stays inside the register budget.
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {"value_block": "value columns per CTA (16, 32, 64 or 128; divides head_dim_v)",
         "staged_store": "O through shared memory as 16-byte rows instead of 2-byte fragment stores "
                         "(bool; not gate 'vector')"}
CANDIDATES = {"value_block": [16, 32, 64, 128]}

SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024,
              "sm_90a": 227 * 1024}
# 32-bit registers the fragments may take (Q 32, s 32, P 16, O and S accumulators)
FRAGMENT_REGS = 200


GLA_CANDIDATES = [64, 128]


def default(spec, target) -> dict:
    if spec.gate == "vector":
        return {"value_block": 128 if spec.head_dim_v % 128 == 0 else 64}
    # 64 columns: B * H * head_dim_v / 64 CTAs (256 for B = 8, H = 16, head_dim_v = 128), two
    # per SM by registers and shared memory.  staged_store off until its GPU run: the delta
    # rule's kernels gained 1.7x (WY) from it on an H200, this one has not been measured
    for bv in (64, 32, 16):
        if spec.head_dim_v % bv == 0:
            return {"value_block": bv, "staged_store": False}
    return {"value_block": 16, "staged_store": False}  # validate() says why not


def validate(spec, target, config) -> None:
    knobs.check(config, KNOBS, "linear_cuda_tc", lambda: _problems(spec, target, config))


def smem_bytes(spec, config) -> int:
    from attngen.linear.tensorcore import CHUNK, PAD

    bv = config["value_block"]
    tiles = 2 * CHUNK * (2 * (spec.head_dim + PAD) + bv + PAD)  # Q, K, V, double-buffered
    # mLSTM's M and c per token, and n (or the normaliser's z) per channel, all fp32
    extra = 4 * (2 * CHUNK + spec.head_dim) if spec.gate == "mlstm" or spec.normalize else 0
    staged = CHUNK * (bv + PAD) if config.get("staged_store") else 0  # O's staging tile
    return 2 * (tiles + spec.head_dim * (bv + PAD) + staged) + 2 * 4 * CHUNK + extra


def gla_smem_bytes(spec, config) -> int:
    """Q, K, V double-buffered, the 16-bit S, the decayed keys (16-bit), B (fp32, rows padded by
    4), a (fp32) and the diagonal tiles (fp32, one per warp)."""
    from attngen.linear.tensorcore import CHUNK, PAD

    bv, d = config["value_block"], spec.head_dim
    halves = 2 * (2 * CHUNK * (2 * (d + PAD) + bv + PAD) + d * (bv + PAD) + CHUNK * (d + PAD))
    return halves + 4 * (CHUNK * (d + 4) + CHUNK * d + bv // 64 * 4 * 16 * 16)


def fragment_regs(spec, config) -> int:
    bv = config["value_block"]
    if spec.gate == "vector":
        bv = 64  # per warp
    return spec.head_dim // 4 + 32 + 16 + bv // 2 + spec.head_dim // 64 * bv // 2 + 8


def _problems(spec, target, config) -> list:
    bv = config.get("value_block")
    gla = spec.gate == "vector"  # templates/linear_chunk_gla_tc.j2: its own blocks and tiles
    staged = config.get("staged_store", False)
    if not isinstance(staged, bool) or (gla and staged):
        return [f"staged_store is a bool, and False for gate 'vector', got {staged!r}"]
    allowed = GLA_CANDIDATES if gla else CANDIDATES["value_block"]
    if bv not in allowed:
        which = " for gate 'vector'" if gla else ""
        return [f"value_block must be one of {allowed}{which}, got {bv!r}"]
    out = []
    if spec.head_dim_v % bv:
        out.append(f"value_block {bv} does not divide head_dim_v {spec.head_dim_v}")
    limit = SMEM_LIMIT.get(target.arch, 99 * 1024)
    smem = (gla_smem_bytes if gla else smem_bytes)(spec, config)
    if smem > limit:
        out.append(f"tiles need {smem} B of shared memory, over {limit} B")
    if not gla and fragment_regs(spec, config) > FRAGMENT_REGS:
        out.append(f"fragments need {fragment_regs(spec, config)} registers per thread, over "
                   f"{FRAGMENT_REGS}: lower value_block")
    return out


def schedule(mod, spec, target, config):
    return mod  # the template binds threads and places every fragment itself
