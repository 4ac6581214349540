"""References for quantised attention, MLA, sparse attention and TTT (attngen/reference/)."""
import numpy as np
import pytest
import torch

from attngen.reference import mla, quant, softmax, sparse, ttt

TOL = 1e-10


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_close(actual, expected, tol=TOL):
    """Max-abs error relative to max(1, max|expected|) <= tol; infinities must match exactly."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    error = np.max(np.abs(actual[finite] - expected[finite]), initial=0.0)
    assert error <= tol * max(1.0, np.max(np.abs(expected[finite]), initial=0.0)), error


def accuracy(o, reference):
    """(cosine similarity, relative L1 error) of o against the exact reference."""
    cosine = np.sum(o * reference) / (np.linalg.norm(o) * np.linalg.norm(reference))
    return cosine, np.sum(np.abs(o - reference)) / np.sum(np.abs(reference))


# ---- quantisation -----------------------------------------------------------------------------

def test_round_half_away():
    x = np.array([0.5, -0.5, 1.5, -2.5, 2.4999, -0.49, 0.0])
    np.testing.assert_array_equal(quant.round_half_away(x), [1, -1, 2, -3, 2, 0, 0])


def e4m3_values():
    """Every finite FP8 E4M3 (fn) value, both signs."""
    exponent, mantissa = np.meshgrid(np.arange(16), np.arange(8), indexing="ij")
    values = np.where(exponent == 0, mantissa / 8 * 2.0 ** -6, (1 + mantissa / 8) * 2.0 ** (exponent - 7.0))
    values = values[~((exponent == 15) & (mantissa == 7))]  # S.1111.111 is NaN
    return np.concatenate([values, -values])


def test_fp8_e4m3_keeps_representable_values():
    values = e4m3_values()
    assert values.max() == 448.0
    np.testing.assert_array_equal(quant.fp8_e4m3(values), values)


@pytest.mark.parametrize("fmt,torch_dtype,limit", [("fp8_e4m3", torch.float8_e4m3fn, 448.0),
                                                    ("fp8_e5m2", torch.float8_e5m2, 57344.0)])
def test_fp8_matches_torch_casts(rng, fmt, torch_dtype, limit):
    x = rng.standard_normal(20000) * np.exp2(rng.uniform(-20, np.log2(limit), 20000))
    x = np.clip(x, -limit, limit).astype(np.float32).astype(np.float64)  # float32 inputs: torch casts via fp32
    expected = torch.from_numpy(x).to(torch.float32).to(torch_dtype).to(torch.float64).numpy()
    np.testing.assert_array_equal(getattr(quant, fmt)(x), expected)


def test_fp8_saturation_ties_and_subnormals():
    x = np.array([448.0, 449.0, 464.0, 1e6, -1e9, 1.0625, 1.1875, 2.0 ** -9, 2.0 ** -10, 3 * 2.0 ** -10, 0.0])
    np.testing.assert_array_equal(
        quant.fp8_e4m3(x), [448.0, 448.0, 448.0, 448.0, -448.0, 1.0, 1.25, 2.0 ** -9, 0.0, 2.0 ** -8, 0.0])
    np.testing.assert_array_equal(quant.fp8_e5m2(np.array([57344.0, 1e9, 1.125, 1.375, 2.0 ** -16])),
                                  [57344.0, 57344.0, 1.0, 1.5, 2.0 ** -16])


def test_quantize_int8_per_block(rng):
    x = rng.standard_normal((2, 3, 200, 16)) + 3.0
    x[0, 0, 64:128] = 0.0  # an all-zero block
    codes, scales, mean = quant.quantize_int8_per_block(x, 64)
    groups = quant.block_groups(200, 64)
    assert codes.dtype == np.int8 and scales.shape == (2, 3, 4) and mean is None
    np.testing.assert_array_equal(scales[0, 0, 1], 0.0)
    np.testing.assert_array_equal(codes[0, 0, 64:128], 0)
    token_scale = scales[..., groups, None]
    np.testing.assert_array_equal(codes, quant.round_half_away(x / np.where(token_scale > 0, token_scale, 1.0)))
    assert np.all(np.abs(quant.dequantize(codes, scales, groups) - x) <= token_scale / 2 * (1 + 1e-12))
    block_code_max = np.stack([np.abs(codes[..., groups == g, :]).max(axis=(-2, -1)) for g in range(4)], -1)
    np.testing.assert_array_equal(block_code_max, np.where(scales > 0, 127, 0))
    codes_s, _, mean_s = quant.quantize_int8_per_block(x, 64, smooth=True)
    assert_close(mean_s, x.mean(axis=-2, keepdims=True))
    np.testing.assert_array_equal(codes_s, quant.quantize_groups(x - mean_s, groups)[0])


def test_sage2_thread_groups():
    np.testing.assert_array_equal(quant.thread_groups_q(40, 32), np.r_[np.arange(32) % 8, 8 + np.arange(8)])
    np.testing.assert_array_equal(quant.thread_groups_k(70, 64)[:10], [0, 0, 1, 1, 2, 2, 3, 3, 0, 0])
    np.testing.assert_array_equal(quant.thread_groups_k(70, 64)[64:], [4, 4, 5, 5, 6, 6])


def channel_biased_qkv(rng, batch=1, heads=2, length=256, dim=64, kv_heads=2):
    q = rng.standard_normal((batch, heads, length, dim))
    k = rng.standard_normal((batch, kv_heads, length, dim))
    k += 2.0 * rng.standard_normal((batch, kv_heads, 1, dim))
    return q, k, rng.standard_normal((batch, kv_heads, length, dim))


def test_exact_quantized_attention_is_attention_k_smoothing_and_lse_correction(rng):
    q, k, v = channel_biased_qkv(rng, batch=2, heads=4, length=37, dim=16, kv_heads=2)
    mask = softmax.causal_mask(37, 37)
    o_ref, lse_ref = softmax.attention(q, k, v, mask=mask)
    o, lse = quant.quantized_attention(q, k, v, qk=None, pv=None, smooth_k=True, block_k=8, mask=mask)
    assert_close(o, o_ref)
    assert_close(lse, lse_ref)
    k_mean = k.mean(axis=-2, keepdims=True)
    o_smooth, lse_smooth = softmax.attention(q, k - k_mean, v, mask=mask)
    assert_close(o_smooth, o_ref)
    assert_close(lse_smooth + 0.25 * (q @ np.swapaxes(np.repeat(k_mean, 2, axis=1), -1, -2))[..., 0], lse_ref)


def test_quantized_scores_are_the_dequantised_product(rng):
    """Psi only (pv=None): attention over the dequantised base-2 operands, checked by hand."""
    q, k, v = channel_biased_qkv(rng, length=70, dim=16)
    o, lse = quant.quantized_attention(q, k, v, qk="int8", pv=None, block_q=32, block_k=16)
    k_mean = k.mean(axis=-2, keepdims=True)
    q_base2 = q * (16 ** -0.5 / np.log(2.0))
    q_groups, k_groups = quant.block_groups(70, 32), quant.block_groups(70, 16)
    q_hat = quant.dequantize(*quant.quantize_groups(q_base2, q_groups), q_groups)
    k_hat = quant.dequantize(*quant.quantize_groups(k - k_mean, k_groups), k_groups)
    o_ref, lse_ref = softmax.attention(q_hat * np.log(2.0), k_hat, v, scale=1.0)
    assert_close(o, o_ref)
    assert_close(lse, lse_ref + 0.25 * (q @ np.swapaxes(k_mean, -1, -2))[..., 0])


def test_sage_simulations_within_methods_bounds(rng):
    q, k, v = channel_biased_qkv(rng)
    o_ref, lse_ref = softmax.attention(q, k, v, mask=softmax.causal_mask(256, 256))
    o1, lse1 = quant.sage1_attention(q, k, v, causal=True)
    cosine, rel_l1 = accuracy(o1, o_ref)
    assert cosine >= 0.999 and rel_l1 <= 0.03, (cosine, rel_l1)
    assert np.max(np.abs(lse1 - lse_ref)) < 0.1
    cosine, rel_l1 = accuracy(quant.sage2_attention(q, k, v, causal=True)[0], o_ref)
    assert cosine >= 0.999 and rel_l1 <= 0.06, (cosine, rel_l1)
    cosine, _ = accuracy(quant.sage2_attention(q, k, v, causal=True, qk="int4")[0], o_ref)
    assert cosine >= 0.98, cosine


def test_k_smoothing_reduces_int8_error_on_channel_biased_keys(rng):
    q, k, v = channel_biased_qkv(rng, length=128)
    o_ref, _ = softmax.attention(q, k, v)
    errors = [accuracy(quant.quantized_attention(q, k, v, qk="int8", pv=None, smooth_k=smooth)[0], o_ref)[1]
              for smooth in (False, True)]
    assert errors[1] < 0.8 * errors[0], errors


def test_fp16_pv_rounds_the_accumulator_after_every_16_keys(rng):
    """Sage v1 Theta: P~ and V in FP16; within a K tile the FP16 MMA accumulator is rounded per 16 keys."""
    q, k = rng.standard_normal((2, 1, 1, 1, 16))
    v = rng.standard_normal((1, 1, 32, 16))
    k = np.repeat(k, 32, axis=2) + rng.standard_normal((1, 1, 32, 16))
    o, lse = quant.quantized_attention(q, k, v, qk=None, pv="fp16", block_k=32, smooth_k=False)
    s = (q @ np.swapaxes(k, -1, -2))[0, 0, 0] / 4.0 / np.log(2.0)
    p = np.exp2(s - s.max())
    v16, p16 = quant.fp16(v[0, 0]), quant.fp16(p)
    acc = quant.fp16(quant.fp16(p16[:16] @ v16[:16]) + p16[16:] @ v16[16:])
    assert_close(o[0, 0, 0], acc / p.sum())
    assert_close(lse[0, 0, 0], (s.max() + np.log2(p.sum())) * np.log(2.0))


def test_quantized_attention_fully_masked_rows(rng):
    q, k, v = channel_biased_qkv(rng, length=20, dim=16)
    mask = np.ones((20, 20), bool)
    mask[3] = False
    for pv in ("fp16", "fp8_e4m3"):
        o, lse = quant.quantized_attention(q, k, v, qk="int8", pv=pv, mask=mask)
        np.testing.assert_array_equal(o[..., 3, :], 0.0)
        np.testing.assert_array_equal(lse[..., 3], -np.inf)
        assert np.isfinite(o).all()


# ---- MLA --------------------------------------------------------------------------------------

def mla_layer(rng, batch=2, q_len=19, kv_len=19, heads=4, r_q=24, r_kv=16, d_n=8, d_r=6, d_v=10, model=40):
    """Random MLA weights and the projected inputs of one layer (DeepSeek-V2 shapes, small)."""
    c_q = rng.standard_normal((batch, q_len, r_q))
    w = dict(w_uq=rng.standard_normal((heads, r_q, d_n)) / np.sqrt(r_q),
             w_qr=rng.standard_normal((heads, r_q, d_r)) / np.sqrt(r_q),
             w_uk=rng.standard_normal((heads, r_kv, d_n)) / np.sqrt(r_kv),
             w_uv=rng.standard_normal((heads, r_kv, d_v)) / np.sqrt(r_kv),
             w_o=rng.standard_normal((heads, d_v, model)) / np.sqrt(heads * d_v))
    q_positions = np.arange(q_len) + kv_len - q_len
    inputs = dict(q_nope=np.einsum("btq,hqn->bhtn", c_q, w["w_uq"]),
                  q_rope=mla.rope(np.einsum("btq,hqn->bhtn", c_q, w["w_qr"]), q_positions),
                  c_kv=rng.standard_normal((batch, kv_len, r_kv)),
                  k_rope=mla.rope(rng.standard_normal((batch, kv_len, d_r)), np.arange(kv_len)),
                  w_uk=w["w_uk"], w_uv=w["w_uv"])
    return c_q, w, inputs


@pytest.mark.parametrize("q_len,causal", [(19, True), (19, False), (1, False), (4, True)],
                         ids=["prefill_causal", "prefill_full", "decode", "chunked_prefill"])
def test_mla_absorbed_matches_naive(rng, q_len, causal):
    _, _, inputs = mla_layer(rng, q_len=q_len)
    mask = softmax.causal_mask(q_len, 19) if causal else None
    assert_close(mla.mla_absorbed(**inputs, mask=mask), mla.mla_naive(**inputs, mask=mask))


def test_mla_absorbed_weights_reproduce_the_layer_output(rng):
    c_q, w, inputs = mla_layer(rng)
    mask = softmax.causal_mask(19, 19)
    u_naive = np.einsum("bhtv,hvd->btd", mla.mla_naive(**inputs, mask=mask), w["w_o"])
    w_q_latent, w_o_latent = mla.absorb_weights(w["w_uq"], w["w_uk"], w["w_uv"], w["w_o"])
    o_latent, _ = mla.mla_latent_attention(np.einsum("btq,hqr->bhtr", c_q, w_q_latent), inputs["q_rope"],
                                           inputs["c_kv"], inputs["k_rope"], scale=(8 + 6) ** -0.5, mask=mask)
    assert_close(np.einsum("bhtr,hrd->btd", o_latent, w_o_latent), u_naive)


def test_rope_is_a_relative_rotation(rng):
    x, y = rng.standard_normal((2, 5, 8))
    assert_close(np.linalg.norm(mla.rope(x, np.arange(5) + 3.0), axis=-1), np.linalg.norm(x, axis=-1))
    dots = [np.sum(mla.rope(x, np.full(5, m)) * mla.rope(y, np.full(5, m - 2.0)), -1) for m in (2.0, 7.0, 40.0)]
    assert_close(dots[1], dots[0])
    assert_close(dots[2], dots[0])


# ---- sparse -----------------------------------------------------------------------------------

def assert_block_sparse_matches_dense(q, k, v, mask, block_m, block_n):
    o_ref, lse_ref = softmax.attention(q, k, v, mask=mask)
    o, lse = softmax.attention_tiled(q, k, v, block_m=block_m, block_n=block_n, mask=mask)
    assert_close(o, o_ref)
    assert_close(lse, lse_ref)


def test_sliding_window_mask(rng):
    mask = sparse.sliding_window_mask(5, 9, left=2, right=1)
    expected = [[abs_j - (i + 4) in (-2, -1, 0, 1) for abs_j in range(9)] for i in range(5)]
    np.testing.assert_array_equal(mask, expected)
    q, k, v = rng.standard_normal((3, 2, 2, 96, 8))
    causal_window = sparse.sliding_window_mask(96, 96, left=20) & softmax.causal_mask(96, 96)
    assert_block_sparse_matches_dense(q, k, v, causal_window, 16, 16)


def test_longformer_mask(rng):
    mask = sparse.longformer_mask(64, window=4, global_tokens=[0, 31])
    assert mask[[0, 31]].all() and mask[:, [0, 31]].all()
    np.testing.assert_array_equal(mask, mask.T)
    assert mask[10, 14] and not mask[10, 15]
    q, k, v = rng.standard_normal((3, 1, 2, 64, 8))
    assert_block_sparse_matches_dense(q, k, v, mask, 16, 16)


def test_bigbird_block_layout(rng):
    layout = sparse.bigbird_block_layout(10, num_random=2, seed=5)
    np.testing.assert_array_equal(layout, sparse.bigbird_block_layout(10, num_random=2, seed=5))
    assert not np.array_equal(layout, sparse.bigbird_block_layout(10, num_random=2, seed=6))
    assert layout[[0, 9]].all() and layout[:, [0, 9]].all()
    for row in range(1, 9):
        window = {row - 1, row, row + 1}
        assert all(layout[row, sorted(window)])
        random_blocks = set(np.flatnonzero(layout[row])) - window - {0, 9}
        assert len(random_blocks) == 2  # num_random, none of them global or in the window
    mask = sparse.block_layout_to_mask(layout, block_q=8, block_k=8, q_len=78, kv_len=78)
    q, k, v = rng.standard_normal((3, 1, 2, 78, 8))
    assert_block_sparse_matches_dense(q, k, v, mask, 8, 8)


def test_block_topk_layout_matches_brute_force(rng):
    q, k, v = rng.standard_normal((3, 2, 2, 70, 8))
    q_len, block_q, block_k, topk = 70, 16, 8, 2
    layout = sparse.block_topk_layout(q, k, block_q=block_q, block_k=block_k, topk=topk)
    for b, h in np.ndindex(2, 2):
        for row_block in range(layout.shape[2]):
            last = min((row_block + 1) * block_q, q_len) - 1
            q_bar = q[b, h, row_block * block_q:last + 1].mean(0)
            scores = {j: q_bar @ k[b, h, j * block_k:(j + 1) * block_k].mean(0) for j in range(last // block_k)}
            chosen = sorted(scores, key=lambda j: (-scores[j], j))[:topk] + [last // block_k]
            np.testing.assert_array_equal(np.flatnonzero(layout[b, h, row_block]), sorted(chosen))
    mask = sparse.block_layout_to_mask(layout, block_q=16, block_k=8, q_len=70, kv_len=70)
    mask &= softmax.causal_mask(70, 70)
    assert_block_sparse_matches_dense(q, k, v, mask, 16, 8)


def test_moba_mask_matches_per_token_selection(rng):
    q, k, v = rng.standard_normal((3, 1, 2, 40, 8))
    mask = sparse.moba_mask(q, k, block=8, topk=3)
    for h, i in np.ndindex(2, 40):
        gates = {j: q[0, h, i] @ k[0, h, j * 8:(j + 1) * 8].mean(0) for j in range(i // 8)}
        blocks = sorted(gates, key=lambda j: (-gates[j], j))[:2] + [i // 8]
        expected = np.zeros(40, bool)
        for j in blocks:
            expected[j * 8:(j + 1) * 8] = True
        np.testing.assert_array_equal(mask[0, h, i], expected & (np.arange(40) <= i))
    assert_block_sparse_matches_dense(q, k, v, mask, 1, 8)


def test_lsh_buckets(rng):
    x = rng.standard_normal((2, 3, 50, 8))
    rotations = sparse.lsh_rotations(8, 6, num_hashes=4, seed=0)
    buckets = sparse.lsh_buckets(x, rotations)
    assert buckets.shape == (4, 2, 3, 50) and buckets.min() >= 0 and buckets.max() < 6
    np.testing.assert_array_equal(sparse.lsh_buckets(3.7 * x, rotations), buckets)
    np.testing.assert_array_equal(rotations, sparse.lsh_rotations(8, 6, num_hashes=4, seed=0))


def lsh_round_by_hand(qk, v, buckets, chunk_size):
    """One causal Reformer round for one head, written as loops over sorted chunks."""
    length, dim = qk.shape
    order = sorted(range(length), key=lambda t: (buckets[t], t))
    keys = qk / np.linalg.norm(qk, axis=-1, keepdims=True)
    chunks = [order[c:c + chunk_size] for c in range(0, length, chunk_size)]
    o, lse = np.zeros((length, v.shape[-1])), np.zeros(length)
    for c, rows in enumerate(chunks):
        cols = rows if len(chunks) == 1 else chunks[c - 1] + rows
        for i in rows:
            logits = np.array([-5e4 if j == i else qk[i] @ keys[j] / np.sqrt(dim) for j in cols])
            visible = np.array([buckets[j] == buckets[i] and j <= i for j in cols])
            p = np.exp(np.where(visible, logits, -np.inf) - logits[visible].max())
            o[i] = p @ v[cols] / p.sum()
            lse[i] = logits[visible].max() + np.log(p.sum())
    return o, lse


@pytest.mark.parametrize("chunk_size", [48, 8], ids=["one_chunk", "six_chunks"])
def test_lsh_attention_matches_loops_and_merges_rounds(rng, chunk_size):
    qk, v = rng.standard_normal((1, 2, 48, 8)), rng.standard_normal((1, 2, 48, 5))
    rotations = sparse.lsh_rotations(8, 4, num_hashes=3, seed=11)
    buckets = sparse.lsh_buckets(qk, rotations)
    rounds = [[lsh_round_by_hand(qk[0, h], v[0, h], buckets[r, 0, h], chunk_size) for h in range(2)]
              for r in range(3)]
    o_rounds = np.array([[o for o, _ in heads] for heads in rounds])
    lse_rounds = np.array([[lse for _, lse in heads] for heads in rounds])
    o_ref, lse_ref = softmax.combine(np.moveaxis(o_rounds, 0, 2)[None], np.moveaxis(lse_rounds, 0, -1)[None])
    o, lse = sparse.lsh_attention(qk, v, rotations=rotations, chunk_size=chunk_size)
    assert_close(o, o_ref)
    assert_close(lse, lse_ref)


def h2o_by_hand(q, k, v, heavy, recent):
    """H2O for one head with an explicit cache list and score dictionary."""
    cache, score, out = [], {}, np.zeros((q.shape[0], v.shape[-1]))
    for t in range(q.shape[0]):
        cache.append(t)
        score[t] = 0.0
        logits = k[cache] @ q[t] / np.sqrt(q.shape[-1])
        p = np.exp(logits - logits.max())
        p /= p.sum()
        out[t] = p @ v[cache]
        for j, p_j in zip(cache, p):
            score[j] += p_j
        older = [j for j in cache if j <= t - recent]
        heavy_hitters = sorted(older, key=lambda j: (-score[j], j))[:heavy]
        cache = sorted(heavy_hitters + [j for j in cache if j > t - recent])
    return out


def test_h2o_matches_explicit_cache_and_full_attention_within_budget(rng):
    q, k, v = rng.standard_normal((3, 1, 2, 48, 8))
    shared = rng.standard_normal(8)
    q += shared
    k[..., 5, :] = 2.0 * shared  # a heavy hitter: every query attends to it
    o, _ = sparse.h2o_attention(q, k, v, heavy=6, recent=10)
    for h in range(2):
        assert_close(o[0, h], h2o_by_hand(q[0, h], k[0, h], v[0, h], 6, 10))
    keep = sparse.h2o_keep_mask(q, k, heavy=6, recent=10)
    assert keep[..., 16:, :].sum(-1).max() == 17 and keep[..., -1, 5].all()
    o_full, lse_full = softmax.attention(q, k, v, mask=softmax.causal_mask(48, 48))
    assert_close(o[..., :17, :], o_full[..., :17, :])
    o_all, lse_all = sparse.h2o_attention(q, k, v, heavy=30, recent=18)
    assert_close(o_all, o_full)
    assert_close(lse_all, lse_full)


# ---- TTT --------------------------------------------------------------------------------------

def test_layer_norm_l2_grad_matches_autograd_and_finite_differences(rng):
    z, target = rng.standard_normal((2, 3, 5, 8)), rng.standard_normal((2, 3, 5, 8))
    weight, bias = 1.0 + 0.1 * rng.standard_normal(8), 0.1 * rng.standard_normal(8)
    grad = ttt.layer_norm_l2_grad(z, target, weight, bias)
    z_torch = torch.from_numpy(z).requires_grad_()
    y = torch.nn.functional.layer_norm(z_torch, (8,), torch.from_numpy(weight), torch.from_numpy(bias),
                                       eps=1e-6)
    (0.5 * ((y - torch.from_numpy(target)) ** 2).sum()).backward()
    assert_close(grad, z_torch.grad.numpy())

    def loss(x):
        return 0.5 * np.sum((ttt.layer_norm(x, weight, bias) - target[0, 0, 0]) ** 2)

    step = np.eye(8) * 1e-6
    finite_differences = [(loss(z[0, 0, 0] + e) - loss(z[0, 0, 0] - e)) / 2e-6 for e in step]
    assert_close(grad[0, 0, 0], finite_differences, tol=1e-8)


def ttt_inputs(rng, length, mini_batch, batch=2, heads=3, dim=8):
    q, k, v = rng.standard_normal((3, batch, heads, length, dim))
    return q, k, v, dict(w0=0.02 * rng.standard_normal((heads, dim, dim)) + 0.1 * np.eye(dim),
                         b0=0.1 * rng.standard_normal((batch, heads, dim)),
                         eta=1.0 / (1.0 + np.exp(-rng.standard_normal((batch, heads, length)))) / dim,
                         theta=1.0 / np.arange(1, mini_batch + 1),
                         ln_weight=1.0 + 0.1 * rng.standard_normal((heads, dim)),
                         ln_bias=0.1 * rng.standard_normal((heads, dim)))


@pytest.mark.parametrize("length,mini_batch", [(45, 16), (32, 16), (9, 1), (7, 16)])
def test_ttt_linear_primal_matches_dual(rng, length, mini_batch):
    q, k, v, options = ttt_inputs(rng, length, mini_batch)
    out_p, w_p, b_p = ttt.ttt_linear_primal(q, k, v, **options)
    out_d, w_d, b_d = ttt.ttt_linear_dual(q, k, v, **options)
    assert out_p.shape == q.shape and w_p.shape == (2, 3, 8, 8) and b_p.shape == (2, 3, 8)
    assert_close(out_d, out_p)
    assert_close(w_d, w_p)
    assert_close(b_d, b_p)


def test_ttt_dual_prefill_then_primal_decode(rng):
    q, k, v, options = ttt_inputs(rng, 40, 16)
    out_ref, w_ref, b_ref = ttt.ttt_linear_primal(q, k, v, **options)
    prefill = dict(options, eta=options["eta"][..., :32])
    _, w, b = ttt.ttt_linear_dual(q[..., :32, :], k[..., :32, :], v[..., :32, :], **prefill)
    decode = dict(options, w0=w, b0=b, eta=options["eta"][..., 32:])
    out, w, b = ttt.ttt_linear_primal(q[..., 32:, :], k[..., 32:, :], v[..., 32:, :], **decode)
    assert_close(out, out_ref[..., 32:, :])
    assert_close(w, w_ref)
    assert_close(b, b_ref)
