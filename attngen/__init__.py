"""attngen: describe an attention variant, get a kernel.

    import attngen
    from attngen import masks, mods
    spec = attngen.Attention(num_heads=32, num_kv_heads=8, head_dim=128, mask=masks.causal())
    kernel = attngen.build(spec, "cpu")        # or "cuda", "cuda-sm80", "cuda-sm90a"
    o, lse = kernel(q, k, v)                   # [batch, heads, seq, dim] tensors
    op = attngen.compile(spec, "cuda")         # tuned kernels as a torch custom op
"""
__version__ = "0.1.0"

from . import masks, mods  # noqa: E402
from .spec import Attention, Decode, LinearAttention, Mask, Paged, Quant, ScoreMod  # noqa: E402


def build(spec, target="cpu", config=None, *, shape=None, use_cache=True):
    """The kernel of ``spec`` for ``target`` (see :func:`attngen.builder.build`).  With ``shape``
    (sizes: ``batch``, ``q_len``, ``kv_len``) and no ``config``, the tuned config of that
    shape's length bucket if the tuning database has one."""
    from .builder import build as _build

    if config is None and shape is not None:
        from .targets import get
        from .tune import best_config

        config = best_config(spec, get(target) if isinstance(target, str) else target, shape)
    return _build(spec, target, config, use_cache=use_cache)


def compile(spec, target="cuda", *, device=None):
    """``spec`` as a torch operator with this device's tuned kernels (see attngen.torch_op)."""
    from .torch_op import compile as _compile

    return _compile(spec, target, device=device)


def load(path):
    """The torch operator of an ``attngen export`` (TVM runtime only; see attngen.export)."""
    from .export import load as _load

    return _load(path)


def namespace() -> dict:
    """Names that the ``repr`` of any spec uses: ``eval(repr(spec), namespace()) == spec``."""
    from . import expr

    ns = dict(expr.namespace())
    ns.update(masks.LIBRARY)
    ns.update(mods.LIBRARY)
    ns.update(Attention=Attention, LinearAttention=LinearAttention, Mask=Mask, ScoreMod=ScoreMod,
              Quant=Quant, Paged=Paged, Decode=Decode)
    return ns


__all__ = ["Attention", "LinearAttention", "Mask", "ScoreMod", "Quant", "Paged", "Decode",
           "masks", "mods", "build", "compile", "load", "namespace", "__version__"]
