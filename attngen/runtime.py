"""Running built CUDA modules, also where only TVM's runtime is installed.

On a GPU host with the runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``, no compiler library) the
CUDA plugin is not loaded by itself, and a module that carries CUDA source needs a compile
callback at load time.  ``ensure_cuda_runtime`` loads the plugin and registers a callback that
compiles with nvcc for the local GPU's arch.  It imports nothing from TVM's compiler.
"""
from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import subprocess
import tempfile


# -ftz=true: exp2f becomes one ex2.approx.ftz (no denormal fix-up around it), as in
# FlashAttention's --use_fast_math builds; an fp32 value below 1.2e-38 in these kernels is a
# probability that vanishes against its row's sum anyway
NVCC_FLAGS = ("-O3", "-ftz=true")


def tvm_dir() -> str:
    """TVM's package directory, found without importing the package (its Python modules take
    1.5 s to import on a runtime-only GPU host, the libraries a few milliseconds)."""
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("TVM is not installed (pip install apache-tvm)")
    return spec.submodule_search_locations[0]


@functools.lru_cache(maxsize=1)
def _runtime_library() -> None:
    """TVM's runtime library, loaded globally as ``import tvm`` loads it: a library TVM
    exported resolves its runtime symbols against it."""
    import tvm_ffi  # noqa: F401  (loads libtvm_ffi, which the runtime library links against)

    ctypes.CDLL(os.path.join(tvm_dir(), "lib", "libtvm_runtime.so"), mode=ctypes.RTLD_GLOBAL)


def load_library(path):
    """``tvm.runtime.load_module`` of an exported shared library (that function is
    ``tvm_ffi.load_module`` once TVM's runtime library is loaded), without importing the
    ``tvm`` package: a cache hit pays for the libraries only."""
    import tvm_ffi

    _runtime_library()
    try:
        return tvm_ffi.load_module(str(path))
    except Exception:  # noqa: BLE001  a library that needs more of TVM: the package's loader
        import tvm  # (it raises the real error if that fails too)

        return tvm.runtime.load_module(str(path))


@functools.lru_cache(maxsize=1)
def ensure_cuda_runtime() -> None:
    import tvm_ffi

    _runtime_library()
    lib = os.path.join(tvm_dir(), "lib", "libtvm_runtime_cuda.so")
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
