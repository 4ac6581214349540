"""Linear attention end to end: a chunkwise prefill, then decode steps that update the state in
place, checked against the float64 recurrence over the whole sequence.

    python examples/linear_decode.py            # CUDA if there is a GPU, else the CPU kernels

The spec is Gated DeltaNet (delta rule + a scalar decay); swap in any other linear spec, e.g.
RWKV-6 (``gate="vector", bonus=True``) or mLSTM (``gate="mlstm"``): the prefill op and the
decode op are the same spec in two forms, and the state one returns is the state the other
continues from.
"""
import numpy as np
import torch

import attngen
from attngen import tolerance
from attngen.linear import data


def main(device: str = None, heads: int = 4, head_dim: int = 64, prefill: int = 100, steps: int = 8,
         dtype: str = None) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    spec = attngen.LinearAttention(num_heads=heads, head_dim=head_dim, gate="scalar", update="delta",
                                   dtype=dtype, chunk_size=64 if device == "cuda" else 16)
    prefill_op = attngen.compile(spec, device)
    decode_op = attngen.compile(spec.replace(form="recurrent"), device)

    # inputs for the whole sequence (unit keys, log gates, beta), and its float64 reference
    inputs = data.sample(spec, {"batch": 2, "heads": heads, "q_len": prefill + steps},
                         np.random.default_rng(0))
    want = data.reference(spec, inputs)
    to = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(device)  # noqa: E731
    torch_dtype = getattr(torch, dtype)
    per_token = {n: to(x) for n, x in inputs.items() if n != "initial_state"}
    qkv = ("q", "k", "v")

    def tokens(lo, hi):
        return {n: (x[:, :, lo:hi].to(torch_dtype) if n in qkv else x[:, :, lo:hi]).contiguous()
                for n, x in per_token.items()}

    o, state = prefill_op(**tokens(0, prefill), initial_state=to(inputs["initial_state"]))
    outs = [o]
    for t in range(prefill, prefill + steps):
        outs.append(decode_op.step(**tokens(t, t + 1), initial_state=state))  # state updated in place

    errors = {"o": tolerance.errors(torch.cat(outs, 2).double().cpu().numpy(), want["o"]),
              "final_state": tolerance.errors(state.double().cpu().numpy(), want["final_state"])}
    for name, err in errors.items():
        print(f"{name:12s} rel-RMSE {err['rel_rmse']:.1e}  "
              f"({'within' if tolerance.passes(err, dtype) else 'OUTSIDE'} the {dtype} tolerance)")
    return errors


if __name__ == "__main__":
    main()
