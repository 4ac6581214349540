"""Running built CUDA modules, also where only TVM's runtime is installed.

On a GPU host with the runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``, no compiler library) the
CUDA plugin is not loaded by itself, and a module that carries CUDA source needs a compile
callback at load time.  ``ensure_cuda_runtime`` loads the plugin and registers a callback that
compiles with nvcc for the local GPU's arch.  It imports nothing from TVM's compiler.
"""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
import tempfile


# -ftz=true: exp2f becomes one ex2.approx.ftz (no denormal fix-up around it), as in
# FlashAttention's --use_fast_math builds; an fp32 value below 1.2e-38 in these kernels is a
# probability that vanishes against its row's sum anyway
NVCC_FLAGS = ("-O3", "-ftz=true")


@functools.lru_cache(maxsize=1)
def ensure_cuda_runtime() -> None:
    import tvm
    import tvm_ffi

    lib = os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so")
    if os.path.exists(lib):
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    from .targets import local_cuda_arch

    arch = local_cuda_arch() or "sm_90a"

    def compile_cuda(code: str) -> bytearray:
        with tempfile.TemporaryDirectory() as d:
            src, out = os.path.join(d, "k.cu"), os.path.join(d, "k.cubin")
            with open(src, "w") as f:
                f.write(code)
            subprocess.run(["nvcc", "-cubin", *NVCC_FLAGS, f"-arch={arch}", "-o", out, src],
                           check=True, capture_output=True)
            with open(out, "rb") as f:
                return bytearray(f.read())

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_cuda, override=True)
