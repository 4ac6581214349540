"""Knobs of the fused recurrent linear-attention kernel (``templates/linear_recurrent_fused.j2``).

The template already is the schedule (explicit thread bindings, register state, shuffles);
what remains is how a head's state is dealt out:

    lanes_per_column   lanes sharing one value column (2 .. 32, a power of two dividing the
                       feature dim): each holds feature_dim / lanes_per_column state rows in
                       registers, and every dot product ends with log2(lanes) xor shuffles.
                       More lanes: shorter per-token chains and more threads for a decode step;
                       fewer: fewer shuffles per token.
    warps              warps per CTA (1, 2, 4, 8); a CTA covers 32 / lanes_per_column * warps
                       value columns of one head, which must divide head_dim_v.

Limits checked by ``validate``: the registers a lane holds (state rows, two token sets of q
and k, the vector gate's rows) stay under the budget below, so nothing spills.
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {"lanes_per_column": "lanes sharing a value column (2, 4, 8, 16 or 32)",
         "warps": "warps per CTA (1, 2, 4 or 8)"}
LANES = (2, 4, 8, 16, 32)
WARPS = (1, 2, 4, 8)
REGISTER_BUDGET = 160  # 32-bit registers of state, token buffers and gates per lane
CANDIDATES = {"lanes_per_column": list(LANES), "warps": list(WARPS)}


def rows(spec, lanes: int) -> int:
    return spec.feature_dim // lanes


def lane_registers(spec, lanes: int) -> int:
    """State (fp32), phi(k) (fp32), q and k of two tokens (16-bit), the vector gate of two
    tokens and its decays, z for the normaliser."""
    r = rows(spec, lanes)
    regs = r + r + 2 * r  # st, kf, qh + kh (two tokens of 16-bit halves)
    if spec.gate == "vector":
        regs += 3 * r
    if spec.normalize:
        regs += r
    return regs + 24


def candidates(spec, target) -> list:
    out = []
    for lanes in LANES:
        if spec.feature_dim % lanes or lane_registers(spec, lanes) > REGISTER_BUDGET:
            continue
        for warps in WARPS:
            if spec.head_dim_v % (32 // lanes * warps) == 0:
                out.append({"lanes_per_column": lanes, "warps": warps})
    return out


def default(spec, target) -> dict:
    # 16 state rows per lane (8 lanes per column at d = 128): a short per-token chain and, for
    # a decode step, B * H * head_dim_v * 8 threads; 4 warps where head_dim_v allows
    valid = candidates(spec, target)
    if not valid:
        return {"lanes_per_column": 8, "warps": 4}  # validate() says why not
    return min(valid, key=lambda c: (abs(rows(spec, c["lanes_per_column"]) - 16), abs(c["warps"] - 4)))


def validate(spec, target, config) -> None:
    knobs.check(config, KNOBS, "linear_cuda_fused", lambda: _problems(spec, target, config))


def _problems(spec, target, config) -> list:
    lanes, warps = config.get("lanes_per_column"), config.get("warps")
    if lanes not in LANES:
        return [f"lanes_per_column must be one of {LANES}, got {lanes!r}"]
    if warps not in WARPS:
        return [f"warps must be one of {WARPS}, got {warps!r}"]
    out = []
    if spec.feature_dim % lanes:
        out.append(f"lanes_per_column {lanes} does not divide the feature dim {spec.feature_dim}")
    elif lane_registers(spec, lanes) > REGISTER_BUDGET:
        out.append(f"{rows(spec, lanes)} state rows per lane need ~{lane_registers(spec, lanes)} "
                   f"registers, over {REGISTER_BUDGET}: raise lanes_per_column")
    if spec.head_dim_v % (32 // lanes * warps):
        out.append(f"a CTA's {32 // lanes * warps} value columns do not divide head_dim_v "
                   f"{spec.head_dim_v}")
    return out


def schedule(mod, spec, target, config):
    return mod  # the template binds threads and places every register itself
