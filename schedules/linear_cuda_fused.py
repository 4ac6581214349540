"""Knobs of the fused recurrent linear-attention kernel (``templates/linear_recurrent_fused.j2``).

The template already is the schedule (explicit thread bindings, register state, shuffles);
what remains is how a head's state is dealt out:

    lanes_per_column   lanes sharing one value column (2 .. 32, a power of two dividing the
                       feature dim): each holds feature_dim / lanes_per_column state rows in
                       registers, and every dot product ends with log2(lanes) xor shuffles.
                       More lanes: shorter per-token chains and more threads for a decode step;
                       fewer: fewer shuffles per token.
    columns_per_lane   adjacent value columns a lane holds (1, 2, 4): a warp's lanes of one
                       row slice then read 32 / lanes_per_column * columns_per_lane adjacent
                       floats of a state row per load, a whole 32-byte sector from 8 on.
    warps              warps per CTA (1, 2, 4, 8); a CTA covers 32 / lanes_per_column *
                       columns_per_lane * warps value columns of one head, which must divide
                       head_dim_v.

Limits checked by ``validate``: the registers a lane holds (state rows, two token sets of q
and k, the vector gate's rows) stay under the budget below, so nothing spills.
"""
from __future__ import annotations

from attngen import knobs

KNOBS = {"lanes_per_column": "lanes sharing a value column (2, 4, 8, 16 or 32)",
         "columns_per_lane": "adjacent value columns per lane (1, 2 or 4)",
         "warps": "warps per CTA (1, 2, 4 or 8)"}
LANES = (2, 4, 8, 16, 32)
COLUMNS = (1, 2, 4)
WARPS = (1, 2, 4, 8)
REGISTER_BUDGET = 160  # 32-bit registers of state, token buffers and gates per lane
CANDIDATES = {"lanes_per_column": list(LANES), "columns_per_lane": list(COLUMNS), "warps": list(WARPS)}


def rows(spec, lanes: int) -> int:
    return spec.feature_dim // lanes


def lane_registers(spec, lanes: int, columns: int) -> int:
    """State (fp32), phi(k) (fp32), q and k of two tokens (16-bit), the vector gate of two
    tokens and its decays, z for the normaliser, u and phi(q) for the bonus, the per-column
    sums."""
    r = rows(spec, lanes)
    regs = r * columns + r + 2 * r + 4 * columns  # st, kf, qh + kh (two tokens of halves), sums
    if spec.gate == "vector":
        regs += 3 * r
    if spec.normalize or spec.gate == "mlstm":
        regs += r
    if spec.bonus:
        regs += 2 * r  # u and phi(q) of the lane's rows
    return regs + 24


def columns_per_warp(config) -> int:
    return 32 // config["lanes_per_column"] * config["columns_per_lane"]


def candidates(spec, target) -> list:
    return [c for c in ({"lanes_per_column": lanes, "columns_per_lane": cpl, "warps": warps}
                        for lanes in LANES for cpl in COLUMNS for warps in WARPS)
            if not _problems(spec, target, c)]


def default(spec, target) -> dict:
    # 16 state rows per lane (8 lanes per column at d = 128): a short per-token chain; then
    # 8 adjacent columns per row slice (whole sectors) and 4 warps, where head_dim_v allows
    valid = candidates(spec, target)
    if not valid:
        return {"lanes_per_column": 8, "columns_per_lane": 2, "warps": 4}  # validate() says why not

    def distance(c):
        return (abs(rows(spec, c["lanes_per_column"]) - 16), abs(columns_per_warp(c) - 8),
                abs(c["warps"] - 4))
    return min(valid, key=distance)


def validate(spec, target, config) -> None:
    knobs.check(config, KNOBS, "linear_cuda_fused", lambda: _problems(spec, target, config))


def _problems(spec, target, config) -> list:
    lanes, cpl, warps = (config.get(k) for k in ("lanes_per_column", "columns_per_lane", "warps"))
    if lanes not in LANES:
        return [f"lanes_per_column must be one of {LANES}, got {lanes!r}"]
    if cpl not in COLUMNS:
        return [f"columns_per_lane must be one of {COLUMNS}, got {cpl!r}"]
    if warps not in WARPS:
        return [f"warps must be one of {WARPS}, got {warps!r}"]
    out = []
    if spec.feature_dim % lanes:
        out.append(f"lanes_per_column {lanes} does not divide the feature dim {spec.feature_dim}")
    elif lane_registers(spec, lanes, cpl) > REGISTER_BUDGET:
        out.append(f"{rows(spec, lanes)} state rows x {cpl} columns per lane need "
                   f"~{lane_registers(spec, lanes, cpl)} registers, over {REGISTER_BUDGET}: raise "
                   "lanes_per_column or lower columns_per_lane")
    per_cta = columns_per_warp(config) * warps
    if spec.head_dim_v % per_cta:
        out.append(f"a CTA's {per_cta} value columns do not divide head_dim_v {spec.head_dim_v}")
    return out


def schedule(mod, spec, target, config):
    return mod  # the template binds threads and places every register itself
