"""Knobs of the tensor-core delta-rule kernels (``templates/linear_delta_wy_tc.j2``, the WY/UT
part, parallel over chunks; ``templates/linear_delta_tc.j2``, the chunk scan).

Both templates are already the schedule (explicit thread bindings, register fragments, PTX
builtins); what remains is the scan's shape:

    value_block   value columns per scan CTA (16, 32 or 64; divides head_dim_v): smaller blocks
                  give more CTAs (B * H * head_dim_v / value_block) but recompute Q K^T and
                  reload Q, K and W once per block.
    stages        1 or 2 copies of the scan's Q, K, W, U tiles in shared memory: 2 loads chunk
                  c + 1 while chunk c computes; 1 halves the tiles' memory so that more CTAs fit
                  an SM, which hides the loads behind the other CTAs instead.

Limits checked by ``validate``: each kernel's shared memory fits the target's, and the scan's
state accumulator (head_dim / 64 * value_block / 2 fp32 per thread) leaves room for the rest.
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {"value_block": "value columns per scan CTA (16, 32 or 64; divides head_dim_v)",
         "stages": "copies of the scan's Q, K, W, U tiles in shared memory (1 or 2)"}
CANDIDATES = {"value_block": [16, 32, 64], "stages": [1, 2]}

SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024,
              "sm_90a": 227 * 1024}
FRAGMENT_REGS = 200


def default(spec, target) -> dict:
    # one copy of the tiles at 64 columns: 80 KB at D = 128, so two CTAs share an SM (two
    # copies take 141 KB: one CTA per SM, nothing to switch to while a warp waits)
    for bv in (64, 32, 16):
        if spec.head_dim_v % bv == 0:
            return {"value_block": bv, "stages": 1}
    return {"value_block": 16, "stages": 1}  # validate() says why not


def validate(spec, target, config) -> None:
    knobs.check(config, KNOBS, "linear_delta_cuda_tc", lambda: _problems(spec, target, config))


def scan_smem_bytes(spec, config) -> int:
    from attngen.linear.tensorcore import CHUNK, PAD

    bv = config["value_block"]
    tiles = config["stages"] * CHUNK * (3 * (spec.head_dim + PAD) + bv + PAD)  # Q, K, W, U
    return 2 * (tiles + spec.head_dim * (bv + PAD)) + 2 * 4 * CHUNK


def wy_smem_bytes(spec) -> int:
    from attngen.linear.tensorcore import CHUNK, PAD

    tiles = CHUNK * (spec.head_dim + spec.head_dim_v + 2 * PAD) * 2  # K and V, one buffer
    return tiles + 2 * CHUNK * (CHUNK + 4) * 4 + 2 * 4 * CHUNK  # L, T in fp32; b, beta


def fragment_regs(spec, config) -> int:
    bv = config["value_block"]
    return spec.head_dim // 4 + 32 + 16 + bv // 2 + spec.head_dim // 64 * bv // 2 + 8


def _problems(spec, target, config) -> list:
    out = []
    for name, values in CANDIDATES.items():
        if config.get(name) not in values:
            out.append(f"{name} must be one of {values}, got {config.get(name)!r}")
    if out:
        return out
    bv = config["value_block"]
    if spec.head_dim_v % bv:
        out.append(f"value_block {bv} does not divide head_dim_v {spec.head_dim_v}")
    limit = SMEM_LIMIT.get(target.arch, 99 * 1024)
    if scan_smem_bytes(spec, config) > limit:
        out.append(f"the scan's tiles need {scan_smem_bytes(spec, config)} B of shared memory, "
                   f"over {limit} B: lower stages or value_block")
    if wy_smem_bytes(spec) > limit:
        out.append(f"the WY kernel needs {wy_smem_bytes(spec)} B of shared memory, over {limit} B")
    if fragment_regs(spec, config) > FRAGMENT_REGS:
        out.append(f"fragments need {fragment_regs(spec, config)} registers per thread, over "
                   f"{FRAGMENT_REGS}: lower value_block")
    return out


def schedule(mod, spec, target, config):
    return mod  # the templates bind threads and place every fragment themselves
