"""The "attngen" TIR pipeline: TVM's default s_tir pipeline, with warp memory lowered to a
fixpoint.

TVM 0.27's LowerWarpMemory rewrites only the first "warp" allocation of a scope, so a kernel
with several mma fragments keeps warp-sized arrays per thread (16 KB of local memory in an
attention kernel).  Running it until no "warp" scope is left fixes that; build with
``tirx.disable_cse_tir`` so CSE does not hide threadIdx.x from the re-runs (tvm-0.27.md §2.4).
"""
from __future__ import annotations

NAME = "attngen"


def ensure_registered() -> None:
    import tvm
    from tvm import tirx
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    from tvm.tirx.compilation_pipeline import PIPELINE_MAP, register_tir_pipeline

    if NAME in PIPELINE_MAP:
        return

    @tvm.transform.module_pass(opt_level=0, name="LowerAllWarpMemory")
    def lower_all_warp_memory(mod, _ctx):
        for _ in range(32):
            if '"warp"' not in mod.script():
                break
            mod = tirx.transform.LowerWarpMemory()(mod)
        return mod

    def factory():
        pipe, finalize_host, _ = default_s_tir_pipeline()
        return pipe, finalize_host, lambda: tvm.transform.Sequential(
            [lower_all_warp_memory, tirx.transform.StmtSimplify(), tirx.transform.LowerIntrin()])

    register_tir_pipeline(NAME, factory)
