"""Form equivalence of the softmax references (attngen/reference/softmax.py), float64 at 1e-10."""
import numpy as np
import pytest
import torch

from attngen.reference import softmax

TOL = 1e-10


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def assert_close(actual, expected, tol=TOL):
    """Max-abs error relative to max(1, max|expected|) <= tol; infinities must match exactly."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite])
    assert np.all(np.isfinite(actual[finite]))
    error = np.max(np.abs(actual[finite] - expected[finite]), initial=0.0)
    assert error <= tol * max(1.0, np.max(np.abs(expected[finite]), initial=0.0)), error


def qkv(rng, batch, q_heads, kv_heads, q_len, kv_len, dk=16, dv=12):
    return (rng.standard_normal((batch, q_heads, q_len, dk)),
            rng.standard_normal((batch, kv_heads, kv_len, dk)),
            rng.standard_normal((batch, kv_heads, kv_len, dv)))


def softcap(s, b, h, q_idx, kv_idx):
    return 2.0 * np.tanh(s / 2.0)


def alibi(s, b, h, q_idx, kv_idx):
    """ALiBi with bottom-right positions for Tq=37, Tk=53 (the tiled-test shapes)."""
    slope = 2.0 ** (-(h + 1.0))
    return s - slope * np.abs(q_idx + 53 - 37 - kv_idx)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [8, 2, 1], ids=["mha", "gqa4", "mqa8"])
def test_attention_matches_torch_sdpa(rng, causal, kv_heads):
    q_len, kv_len = (29, 29) if causal else (23, 41)
    q, k, v = qkv(rng, 2, 8, kv_heads, q_len, kv_len)
    o, lse = softmax.attention(q, k, v, mask=softmax.causal_mask(q_len, kv_len) if causal else None)
    tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))
    o_torch = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, enable_gqa=True)
    scores = tq @ tk.repeat_interleave(8 // kv_heads, dim=1).transpose(-1, -2) / 4.0
    if causal:
        scores = scores.masked_fill(torch.ones(q_len, kv_len, dtype=torch.bool).triu(1), float("-inf"))
    assert_close(o, o_torch.numpy())
    assert_close(lse, torch.logsumexp(scores, dim=-1).numpy())


def test_sinks_match_explicit_virtual_key(rng):
    q, k, v = qkv(rng, 2, 4, 2, 9, 13)
    sinks = rng.standard_normal(4)
    o, lse = softmax.attention(q, k, v, sinks=sinks)
    scores = np.einsum("bhid,bhjd->bhij", q, np.repeat(k, 2, axis=1)) / 4.0
    logits = np.concatenate([scores, np.broadcast_to(sinks[:, None, None], (2, 4, 9, 1))], axis=-1)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    assert_close(o, p[..., :-1] @ np.repeat(v, 2, axis=1))
    assert_close(lse, np.log(np.exp(logits).sum(-1)))


@pytest.mark.parametrize("sinks", [False, True], ids=["no_sinks", "sinks"])
@pytest.mark.parametrize("score_mod", [None, softcap, alibi], ids=["plain", "softcap", "alibi"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kv_heads", [8, 2, 1], ids=["mha", "gqa4", "mqa8"])
def test_tiled_matches_naive(rng, causal, score_mod, sinks, kv_heads):
    q, k, v = qkv(rng, 2, 8, kv_heads, 37, 53)
    options = dict(mask=softmax.causal_mask(37, 53) if causal else None, score_mod=score_mod,
                   sinks=rng.standard_normal(8) if sinks else None)
    o_ref, lse_ref = softmax.attention(q, k, v, **options)
    o, lse = softmax.attention_tiled(q, k, v, block_m=8, block_n=11, **options)
    assert_close(o, o_ref)
    assert_close(lse, lse_ref)


def test_tiled_skips_fully_masked_tiles(rng):
    """Key tiles that the mask hides from a whole query tile are never touched: NaN there is harmless."""
    q, k, v = qkv(rng, 1, 2, 2, 16, 48)
    visible = np.zeros((16, 48), bool)
    visible[:8, :16] = True
    visible[8:, 32:] = True
    k_poisoned, v_poisoned = k.copy(), v.copy()
    k_poisoned[..., 16:32, :] = np.nan
    v_poisoned[..., 16:32, :] = np.nan
    o, lse = softmax.attention_tiled(q, k_poisoned, v_poisoned, block_m=8, block_n=16, mask=visible)
    o_ref, lse_ref = softmax.attention(q, k, v, mask=visible)
    assert_close(o, o_ref)
    assert_close(lse, lse_ref)


def test_fully_masked_rows_give_zero_output_and_minus_inf_lse(rng):
    q, k, v = qkv(rng, 2, 4, 2, 12, 7)
    mask = softmax.causal_mask(12, 7)  # bottom-right: the first 5 rows see nothing
    mask = mask & (rng.random((2, 4, 12, 7)) < 0.7)
    for o, lse in (softmax.attention(q, k, v, mask=mask),
                   softmax.attention_tiled(q, k, v, block_m=4, block_n=3, mask=mask),
                   softmax.combine(*softmax.split_kv(q, k, v, num_splits=3, mask=mask))):
        empty = ~mask.any(-1)
        assert empty[..., :5].all()
        np.testing.assert_array_equal(o[empty], 0.0)
        np.testing.assert_array_equal(lse[empty], -np.inf)
        assert np.isfinite(lse[~empty]).all()


def test_fully_masked_rows_with_sinks_give_sink_lse(rng):
    q, k, v = qkv(rng, 1, 4, 4, 6, 5)
    sinks = rng.standard_normal(4)
    mask = np.zeros((6, 5), bool)
    for o, lse in (softmax.attention(q, k, v, mask=mask, sinks=sinks),
                   softmax.attention_tiled(q, k, v, block_m=4, block_n=2, mask=mask, sinks=sinks),
                   softmax.combine(*softmax.split_kv(q, k, v, num_splits=2, mask=mask, sinks=sinks))):
        np.testing.assert_array_equal(o, 0.0)
        np.testing.assert_array_equal(lse, np.broadcast_to(sinks[None, :, None], lse.shape))


@pytest.mark.parametrize("num_splits", [1, 5, 64], ids=["one", "five", "64_some_empty"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_split_kv_combine_matches_naive(rng, num_splits, causal):
    q, k, v = qkv(rng, 2, 8, 2, 37, 53)
    options = dict(mask=softmax.causal_mask(37, 53) if causal else None, score_mod=alibi,
                   sinks=rng.standard_normal(8))
    o_parts, lse_parts = softmax.split_kv(q, k, v, num_splits=num_splits, **options)
    assert o_parts.shape == (2, 8, 37, num_splits, 12) and lse_parts.shape == (2, 8, 37, num_splits)
    if num_splits == 64:
        assert np.isneginf(lse_parts[..., 53:]).all() and (o_parts[..., 53:, :] == 0).all()
    o_ref, lse_ref = softmax.attention(q, k, v, **options)
    o, lse = softmax.combine(o_parts, lse_parts)
    assert_close(o, o_ref)
    assert_close(lse, lse_ref)


def test_combine_of_only_empty_splits():
    o, lse = softmax.combine(np.zeros((2, 3, 4)), np.full((2, 3), -np.inf))
    np.testing.assert_array_equal(o, 0.0)
    np.testing.assert_array_equal(lse, -np.inf)


def paged_copy(rng, k, v, kv_lens, page_size, num_pages):
    """Scatter contiguous caches [B, Hkv, T, d] into shuffled pages; unused slots hold NaN."""
    max_pages = -(-k.shape[2] // page_size)
    page_table = np.full((k.shape[0], max_pages), -1, np.int32)
    k_pages = np.full((num_pages, k.shape[1], page_size, k.shape[3]), np.nan)
    v_pages = np.full((num_pages, v.shape[1], page_size, v.shape[3]), np.nan)
    free = iter(rng.permutation(num_pages))
    for b, length in enumerate(kv_lens):
        for t in range(length):
            if t % page_size == 0:
                page_table[b, t // page_size] = next(free)
            k_pages[page_table[b, t // page_size], :, t % page_size] = k[b, :, t]
            v_pages[page_table[b, t // page_size], :, t % page_size] = v[b, :, t]
    return k_pages, v_pages, page_table


@pytest.mark.parametrize("q_len,causal", [(1, False), (1, True), (4, True), (4, False)],
                         ids=["decode", "decode_causal", "prefill_causal", "prefill_full"])
def test_paged_matches_contiguous(rng, q_len, causal):
    kv_lens = np.array([23, 0, 9, 16])
    q, k, v = qkv(rng, 4, 6, 2, q_len, 23)
    k_pages, v_pages, page_table = paged_copy(rng, k, v, kv_lens, page_size=4, num_pages=40)
    k_gathered, _ = softmax.gather_paged(k_pages, page_table, kv_lens)
    for b, length in enumerate(kv_lens):
        np.testing.assert_array_equal(k_gathered[b, :, :length], k[b, :, :length])
    o, lse = softmax.paged_attention(q, k_pages, v_pages, page_table, kv_lens, causal=causal)
    for b, length in enumerate(kv_lens):
        mask = softmax.causal_mask(q_len, length) if causal else None
        o_b, lse_b = softmax.attention(q[b:b + 1], k[b:b + 1, :, :length], v[b:b + 1, :, :length], mask=mask)
        assert_close(o[b:b + 1], o_b)
        assert_close(lse[b:b + 1], lse_b)
    np.testing.assert_array_equal(lse[1], -np.inf)


@pytest.mark.parametrize("num_splits", [1, 3, 7])
def test_decode_matches_attention(rng, num_splits):
    kv_lens = np.array([31, 5, 17])
    q, k, v = qkv(rng, 3, 8, 1, 2, 31)
    sinks = rng.standard_normal(8)
    o, lse = softmax.decode(q, k, v, kv_lens, causal=True, num_splits=num_splits, sinks=sinks)
    for b, length in enumerate(kv_lens):
        o_b, lse_b = softmax.attention(q[b:b + 1], k[b:b + 1, :, :length], v[b:b + 1, :, :length],
                                       mask=softmax.causal_mask(2, length), sinks=sinks)
        assert_close(o[b:b + 1], o_b)
        assert_close(lse[b:b + 1], lse_b)


def test_shape_errors_explain_the_fix(rng):
    q, k, v = qkv(rng, 1, 6, 4, 3, 5)
    with pytest.raises(ValueError, match="multiple of Hkv"):
        softmax.attention(q, k, v)
    with pytest.raises(ValueError, match="num_splits"):
        softmax.split_kv(q, k[:, :2], v[:, :2], num_splits=0)
