"""The linear-attention family: ``LinearAttention`` specs lowered to TensorIR kernels.

Calling convention (head-major; ``H`` = num_heads, ``D`` = head_dim, ``Dv`` = head_dim_v,
``F`` = feature_dim, the width of phi(q) and phi(k): D, or 2 * num_features for performer;
batch and q_len are symbolic: one build serves every length):

inputs
    q, k           [batch, H, q_len, D]       spec.dtype; q is scaled by spec.scale, and the
                                              feature map is applied in the kernel
    v              [batch, H, q_len, Dv]      spec.dtype
    g              [batch, H, q_len]          gate "scalar": float32 log gate (<= 0) per token
                   [batch, H, q_len, F]       gate "vector": float32 log gate per key channel
                                              (gate "fixed", RetNet, takes no tensor: log gamma_h
                                              = log(1 - 2^(-5-h)) is built in)
    i_pre, f_pre   [batch, H, q_len]          gate "mlstm": float32 input / forget gate
                                              pre-activations (exp and logsigmoid in the kernel)
    beta           [batch, H, q_len]          update "delta": float32 in (0, 1); the keys must
                                              be L2-normalised by the caller
    bonus          [H, F]                     bonus (RWKV-6's u): float32
    omega          [D, num_features]          feature_map "performer": float32 projection
    initial_state  [batch, H, F, Dv]          float32
    z0             [batch, H, F]              normalize: float32 running key sum (mlstm: n)
    m0             [batch, H]                 gate "mlstm": float32 stabiliser
outputs
    o              [batch, H, q_len, Dv]      spec.dtype
    final_state    [batch, H, F, Dv]          float32 (continue with it: chunkwise prefill, then
                                              recurrent decode steps)
    z_final        [batch, H, F]              normalize, mlstm: float32
    m_final        [batch, H]                 gate "mlstm": float32
scratch (parallel form; allocated by the driver, shared by the calls)
    cum_gate       like g, then 2             the log gates summed over the sequence, as a
                                              compensated (hi, lo) pair
    u              [batch, H, q_len, Dv]      update "delta": float32 pseudo-values

The math is methods.md section 4 in the row-vector convention (S is [F, Dv], o_t = scale
phi(q_t) S_t); with normalize o_t is divided by scale phi(q_t) . z_t (no epsilon).  performer
uses hyperbolic positive random features (see ``data.features``).

Kernels, in call order: ``linear_recurrent`` or ``linear_chunkwise`` (one each); the parallel
form calls ``linear_parallel_cumulate_gates`` (scalar/vector gates), ``linear_parallel_solve_delta``
(delta rule), ``linear_parallel_outputs`` and ``linear_parallel_final_state``.  Templates:
``templates/linear_{recurrent,chunkwise,parallel}.j2``.  Schedules: ``schedules/linear_cpu.py``
(llvm) and ``schedules/linear_cuda.py`` (SIMT), each declaring its knobs in ``KNOBS`` with
``default(spec, target)`` and ``validate(spec, target, config)``.  On CUDA, chunkwise specs with
a scalar decay (or none), identity features and the additive update take the tensor-core kernel
``linear_chunk_tc`` instead (``attngen.linear.tensorcore``, ``templates/linear_chunk_tc.j2``,
knobs in ``schedules/linear_cuda_tc.py``); with GLA's vector decay (head_dim 128) the kernel
``linear_chunk_gla_tc`` (``templates/linear_chunk_gla_tc.j2``, same module and knobs);
chunkwise delta-rule specs (gate None or "scalar") take ``linear_delta_wy_tc`` then
``linear_delta_tc`` (``attngen.linear.delta_tc``), which pass W and U through the scratch
buffers ``w`` and ``u`` [batch, H, q_len, D / Dv] in spec.dtype.  The recurrent form (all but
Performer) takes the fused kernel ``linear_recurrent_fused`` (``attngen.linear.fused``, knobs in
``schedules/linear_cuda_fused.py``), whose state may be updated in place (``AttentionOp.step``).
"""
from __future__ import annotations

from ..family import ModuleFamily
from ..spec import LinearAttention
from . import data, lower, signature

FAMILY = ModuleFamily("linear", LinearAttention, lower, signature, data)
