"""Float64 numpy references for every attention family attngen generates kernels for."""
from . import linear, mla, quant, softmax, sparse, ttt
