"""Knobs of the tensor-core delta-rule kernels (``templates/linear_delta_wy_tc.j2``, the WY/UT
part, parallel over chunks; then the chunk scan, ``templates/linear_delta_tc.j2`` in one pass
or ``linear_delta_state_tc.j2`` + ``linear_delta_out_tc.j2`` in two).

The templates are already the schedule (explicit thread bindings, register fragments, PTX
builtins); what remains is the scan's shape:

    passes        1: one sequential kernel computes the outputs and the state chunk by chunk;
                  2: the sequential kernel only carries the state (writing each chunk's entering
                  state and V' to scratch), a second kernel computes all chunks' outputs in
                  parallel (flash-linear-attention's split).  Measured on an H200 (B8 H16 D128
                  bf16): 1 is faster at 4096 and 16384 tokens (gated: 2.62 against 2.99 ms at
                  16384): the state pass alone takes 1.1 ms of the one pass's 1.4, so the
                  scratch round trip and the second launch cost more than they save.
    value_block   value columns per sequential CTA (16, 32 or 64; divides head_dim_v): smaller
                  blocks give more CTAs (B * H * head_dim_v / value_block) but reload K and W
                  (and, in one pass, Q and Q K^T) once per block.
    stages        1 or 2 copies of the sequential kernel's tiles in shared memory: 2 loads chunk
                  c + 1 while chunk c computes; 1 halves the tiles' memory so that more CTAs fit
                  an SM, which hides the loads behind the other CTAs instead.
    out_value_block  value columns per CTA of the output pass (two passes; 16, 32, 64 or 128,
                  divides head_dim_v): Q K^T is computed once per block.

Limits checked by ``validate``: each kernel's shared memory fits the target's, and the scan's
state accumulator (head_dim / 64 * value_block / 2 fp32 per thread) leaves room for the rest.
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {"passes": "1 (one sequential kernel) or 2 (state pass, then the outputs in parallel)",
         "value_block": "value columns per sequential CTA (16, 32 or 64; divides head_dim_v)",
         "stages": "copies of the sequential kernel's tiles in shared memory (1 or 2)",
         "out_value_block": "value columns per output-pass CTA (16, 32, 64 or 128; divides head_dim_v)"}
CANDIDATES = {"passes": [1, 2], "value_block": [16, 32, 64], "stages": [1, 2],
              "out_value_block": [16, 32, 64, 128]}

SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_86": 99 * 1024, "sm_89": 99 * 1024, "sm_90": 227 * 1024,
              "sm_90a": 227 * 1024}
FRAGMENT_REGS = 200


def _widest(dv, blocks) -> int:
    return next((b for b in blocks if dv % b == 0), blocks[-1])  # validate() says why not


def default(spec, target) -> dict:
    # one copy of the tiles at 64 columns: 89 KB at D = 128 in one pass, so two CTAs share an
    # SM (two copies take 150 KB: one CTA per SM, nothing to switch to while a warp waits)
    return {"passes": 1, "value_block": _widest(spec.head_dim_v, (64, 32, 16)), "stages": 1,
            "out_value_block": _widest(spec.head_dim_v, (128, 64, 32, 16))}


def validate(spec, target, config) -> None:
    knobs.check(config, KNOBS, "linear_delta_cuda_tc", lambda: _problems(spec, target, config))


def scan_smem_bytes(spec, config) -> int:
    """The sequential kernel's: K, W, U tiles (and Q in one pass), S, the gates (and in one
    pass the O tile staged for its 16-byte stores)."""
    from attngen.linear.tensorcore import CHUNK, PAD

    bv, per_chunk = config["value_block"], 4 - config["passes"]  # Q, K, W or K, W
    tiles = config["stages"] * CHUNK * (per_chunk * (spec.head_dim + PAD) + bv + PAD)
    staged = CHUNK * (bv + PAD) if config["passes"] == 1 else 0
    return 2 * (tiles + spec.head_dim * (bv + PAD) + staged) + 2 * 4 * CHUNK


def out_smem_bytes(spec, config) -> int:
    """The output pass's: Q, K, V', S tiles and the gates."""
    from attngen.linear.tensorcore import CHUNK, PAD

    bv = config["out_value_block"]
    return 2 * (2 * CHUNK * (spec.head_dim + PAD) + (CHUNK + spec.head_dim) * (bv + PAD)) + 4 * CHUNK


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
    for knob in ("value_block", "out_value_block"):
        if spec.head_dim_v % config[knob]:
            out.append(f"{knob} {config[knob]} does not divide head_dim_v {spec.head_dim_v}")
    widest = _widest(spec.head_dim_v, (128, 64, 32, 16))
    if config["passes"] == 1 and config["out_value_block"] != widest:
        # no kernel reads it: a tuner would build the same program once per value
        out.append(f"out_value_block shapes the output pass of passes=2 only; with passes=1 "
                   f"leave it at {widest}")
    limit = SMEM_LIMIT.get(target.arch, 99 * 1024)
    if scan_smem_bytes(spec, config) > limit:
        out.append(f"the scan's tiles need {scan_smem_bytes(spec, config)} B of shared memory, "
                   f"over {limit} B: lower stages or value_block")
    if config["passes"] == 2 and out_smem_bytes(spec, config) > limit:
        out.append(f"the output pass needs {out_smem_bytes(spec, config)} B of shared memory, "
                   f"over {limit} B: lower out_value_block")
    if wy_smem_bytes(spec) > limit:
        out.append(f"the WY kernel needs {wy_smem_bytes(spec)} B of shared memory, over {limit} B")
    if fragment_regs(spec, config) > FRAGMENT_REGS:
        out.append(f"fragments need {fragment_regs(spec, config)} registers per thread, over "
                   f"{FRAGMENT_REGS}: lower value_block")
    return out


def schedule(mod, spec, target, config):
    return mod  # the templates bind threads and place every fragment themselves
