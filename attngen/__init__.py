"""attngen: describe an attention variant, get a kernel.

    import attngen
    from attngen import masks, mods
    spec = attngen.Attention(num_heads=32, num_kv_heads=8, head_dim=128, mask=masks.causal())
    kernel = attngen.build(spec, "cpu")        # or "cuda", "cuda-sm80", "cuda-sm90a"
    o, lse = kernel(q, k, v)                   # [batch, heads, seq, dim] tensors
"""
__version__ = "0.1.0"

from . import masks, mods  # noqa: E402
from .spec import Attention, Decode, LinearAttention, Mask, Paged, Quant, ScoreMod  # noqa: E402


def build(spec, target="cpu", config=None, *, use_cache=True):
    """The kernel of ``spec`` for ``target`` (see :func:`attngen.build.build`)."""
    from .build import build as _build

    return _build(spec, target, config, use_cache=use_cache)


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
           "masks", "mods", "build", "namespace", "__version__"]
