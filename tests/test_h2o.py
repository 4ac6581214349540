"""H2O (attngen/h2o.py): the eviction ops against the float64 reference policy
(attngen.reference.sparse.h2o_keep_mask / h2o_attention), prefill then decode steps; the
accumulated-weights kernel (templates/decode_h2o_weights.j2): generated code here, float64
references on a GPU (skipped without one).

Where only TVM's runtime is installed, the kernels must already be in the build cache
(``ATTNGEN_CACHE_DIR``): ``python tests/prebuild_gpu.py``.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from attngen import Attention, Decode, Paged, h2o, masks
from attngen.builder import compile_lowered, ensure_cached
from attngen.gallery import GALLERY
from attngen.reference import sparse
from attngen.reference.softmax import attention, causal_mask
from attngen.softmax import data
from attngen.targets import get as get_target

NVCC = shutil.which("nvcc")
SM90 = get_target("cuda-sm90a")

SPECS = {
    "gqa4": Attention(num_heads=32, num_kv_heads=8, head_dim=128, phase=Decode(1)),
    "mha_d64_bf16": Attention(num_heads=4, head_dim=64, dtype="bfloat16", phase=Decode(1)),
    "spec4_causal_paged16_sinks": Attention(num_heads=8, num_kv_heads=2, head_dim=64, mask=masks.causal(),
                                            phase=Decode(4), kv_layout=Paged(16), sinks=True),
    "window_softcap_d256": Attention(num_heads=8, num_kv_heads=4, head_dim=256, mask=masks.sliding_window(100),
                                     score_mod=GALLERY["softcap"].spec.score_mod, phase=Decode(1)),
}
LENGTHS = (1, 63, 64, 65, 4097, 32768)


def prebuild(target: str = "cuda") -> None:
    """Fill the build cache for a GPU host that has only TVM's runtime."""
    for spec in list(SPECS.values()) + [pipeline_spec(1), pipeline_spec(2), paged_pipeline_spec()]:
        ensure_cached(spec, target)
        h2o.ensure_weights_cached(spec, target)


def pipeline_spec(group: int, dtype: str = "float16") -> Attention:
    return Attention(num_heads=2 * group, num_kv_heads=2, head_dim=64, dtype=dtype, phase=Decode(1))


def paged_pipeline_spec() -> Attention:
    return Attention(num_heads=4, num_kv_heads=2, head_dim=64, phase=Decode(1), kv_layout=Paged(16))


# ----------------------------------------------------------------------------- the policy (CPU)


def reference_decode(spec):
    """``(o, lse, weights)`` of a cache step in float64: what H2ODecode returns, exactly."""
    def run(q, k, v, kv_lens):
        inputs = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "kv_lens": kv_lens.numpy()}
        out = data.reference(spec, inputs)
        w = h2o.reference_weights(spec, inputs, out["lse"])
        return torch.from_numpy(out["o"]), torch.from_numpy(out["lse"]), torch.from_numpy(w)
    return run


def grouped_keep_mask(q, k, *, heavy, recent, group):
    """The policy with F summed over each KV head's query heads, token by token, in float64
    ([B, Hkv, T, T]); with group 1 it is ``sparse.h2o_keep_mask`` (checked below)."""
    B, H, T, D = q.shape
    logits = D ** -0.5 * np.einsum("bhid,bhjd->bhij", q, np.repeat(k, group, axis=1))
    token = np.arange(T)
    cached, acc = np.zeros((B, H // group, T), bool), np.zeros((B, H // group, T))
    keep = np.zeros((B, H // group, T, T), bool)
    for t in token:
        cached[..., t] = True
        keep[..., t, :] = cached
        row = np.where(np.repeat(cached, group, axis=1), logits[..., t, :], -np.inf)
        p = np.exp(row - row.max(-1, keepdims=True))
        acc += (p / p.sum(-1, keepdims=True)).reshape(B, H // group, group, T).sum(2)
        old = cached & (token <= t - recent)
        cached = (cached & ~old) | sparse._top_k(acc, old, heavy)
    return keep


def run_policy(q, k, v, *, prefill, heavy, recent, group, decode):
    """Prefill ``prefill`` tokens, then one H2OCache step per token; per step the cache the
    token attends to (a set of positions per (b, kv head)) and o."""
    T = q.shape[2]
    cache = h2o.H2OCache.from_prefill(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill],
                                      capacity=heavy + recent + 1, heavy=heavy, recent=recent)
    seen, outs = {}, {}
    for t in range(prefill, T):
        n = int(cache.kv_lens[0]) + 1
        outs[t] = cache.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], t, decode)
        # the step appended t at slot n - 1 and attended over slots [0, n) before evicting:
        # those positions are in `attended`
        seen[t] = cache.attended
        assert n == cache.attended.shape[-1]
    return seen, outs


@pytest.mark.parametrize("group", [1, 2])
def test_grouped_policy_helper_is_the_reference_at_group_1(group):
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((2, 2 * group, 12, 8)), rng.standard_normal((2, 2, 12, 8))
    keep = grouped_keep_mask(q, k, heavy=3, recent=2, group=group)
    if group == 1:
        np.testing.assert_array_equal(keep, sparse.h2o_keep_mask(q, k, heavy=3, recent=2))
    assert keep[..., -1, :].sum(-1).max() == 6  # budget 5 plus the new token


@pytest.mark.parametrize("group, prefill, heavy, recent", [(1, 4, 3, 2), (1, 1, 2, 3), (2, 5, 4, 1), (1, 6, 2, 4)])
def test_cache_steps_follow_the_reference_policy(group, prefill, heavy, recent):
    """Prefill (<= budget: no eviction yet), then decode steps: every step's cache and output
    equal the float64 reference's (F exact in float64, so no near-tie can differ)."""
    rng = np.random.default_rng(group * 100 + prefill)
    B, Hkv, T, D = 2, 2, 20, 16
    q = torch.from_numpy(rng.standard_normal((B, Hkv * group, T, D)))
    k = torch.from_numpy(rng.standard_normal((B, Hkv, T, D)))
    v = torch.from_numpy(rng.standard_normal((B, Hkv, T, D)))
    spec = Attention(num_heads=Hkv * group, num_kv_heads=Hkv, head_dim=D, dtype="float32", phase=Decode(1))
    seen, outs = run_policy(q, k, v, prefill=prefill, heavy=heavy, recent=recent, group=group,
                            decode=reference_decode(spec))
    keep = grouped_keep_mask(q.numpy(), k.numpy(), heavy=heavy, recent=recent, group=group)
    mask = np.repeat(keep, group, axis=1)  # per query head
    o_ref, _ = attention(q.numpy(), np.repeat(k.numpy(), group, 1), np.repeat(v.numpy(), group, 1), mask=mask)
    evicted_somewhere = False
    for t in range(prefill, T):
        for b in range(B):
            for h in range(Hkv):
                want = set(np.flatnonzero(keep[b, h, t]))
                assert set(seen[t][b, h].tolist()) - {-1} == want, (t, b, h)
                evicted_somewhere |= len(want) < t + 1
        np.testing.assert_allclose(outs[t][:, :, 0].numpy(), o_ref[:, :, t], rtol=0, atol=1e-10)
    assert evicted_somewhere


def test_a_budget_of_every_token_is_full_causal_attention():
    rng = np.random.default_rng(3)
    q, k, v = (torch.from_numpy(rng.standard_normal((1, 2, 10, 8))) for _ in range(3))
    spec = Attention(num_heads=2, head_dim=8, dtype="float32", phase=Decode(1))
    _, outs = run_policy(q, k, v, prefill=3, heavy=5, recent=5, group=1, decode=reference_decode(spec))
    o_ref, _ = attention(q.numpy(), k.numpy(), v.numpy(), mask=causal_mask(10, 10))
    for t, o in outs.items():
        np.testing.assert_allclose(o[:, :, 0].numpy(), o_ref[:, :, t], atol=1e-10)


def test_keep_mask_ranks_ties_to_the_older_token():
    scores = torch.tensor([[[1.0, 2.0, 2.0, 1.0, 5.0, 0.0]]])
    positions = torch.tensor([[[0, 1, 2, 3, 4, 5]]], dtype=torch.int32)
    lens = torch.tensor([6], dtype=torch.int32)
    keep = h2o.keep_mask(scores, positions, lens, heavy=2, recent=2, newest=5)
    # recent: positions 4, 5; heavy among 0..3: F 2.0 at positions 1 and 2 (not 0 or 3)
    assert keep[0, 0].tolist() == [False, True, True, False, True, True]
    keep = h2o.keep_mask(scores, positions, lens, heavy=1, recent=2, newest=5)
    assert keep[0, 0].tolist() == [False, True, False, False, True, True]
    keep = h2o.keep_mask(scores, positions, torch.tensor([3], dtype=torch.int32), heavy=0, recent=1, newest=2)
    assert keep[0, 0].tolist() == [False, False, True, False, False, False]  # slots past the length: never


def test_compact_moves_kept_slots_to_the_front_in_order():
    keep = torch.tensor([[[True, False, True, False, True], [False, True, True, True, False]]])
    x = torch.arange(10, dtype=torch.float64).view(1, 2, 5, 1)
    (y, lens) = h2o.compact(keep, torch.tensor([5], dtype=torch.int32), x)
    assert y[0, 0, :3, 0].tolist() == [0, 2, 4] and y[0, 1, :3, 0].tolist() == [6, 7, 8]
    assert lens.tolist() == [3] and lens.dtype == torch.int32


def _paged(x, page: int, rng, spare: int = 3):
    """``x [B, Hkv, cap, d]`` as a pool of pages in a shuffled order (plus spare pages holding
    NaN, which nothing may read) and each sequence's page table."""
    B, Hkv, cap, d = x.shape
    n = cap // page
    perm = torch.from_numpy(rng.permutation(B * n + spare))
    pool = torch.full((B * n + spare, Hkv, page, d), float("nan"), dtype=x.dtype)
    table = perm[:B * n].view(B, n).to(torch.int32)
    pool[table.long().view(-1)] = x.view(B, Hkv, n, page, d).permute(0, 2, 1, 3, 4).reshape(B * n, Hkv, page, d)
    return pool, table


def _gathered(pool, table):
    """The pool's pages back in each sequence's logical order: ``[B, Hkv, cap, d]``."""
    B, n = table.shape
    x = pool[table.long().view(-1)].view(B, n, *pool.shape[1:])
    return x.permute(0, 2, 1, 3, 4).reshape(B, pool.shape[1], n * pool.shape[2], pool.shape[3])


@pytest.mark.parametrize("page", [1, 4, 16])
def test_compact_paged_is_compact_through_the_page_table(page):
    rng = np.random.default_rng(page)
    B, Hkv, cap, d = 3, 2, 32, 5
    x = torch.from_numpy(rng.standard_normal((B, Hkv, cap, d)))
    lens = torch.tensor([32, 20, 7], dtype=torch.int32)
    keep = torch.zeros(B, Hkv, cap, dtype=torch.bool)
    for b, n_keep in enumerate((11, 9, 7)):  # the same count for every head of a sequence
        for h in range(Hkv):
            keep[b, h, torch.from_numpy(rng.choice(int(lens[b]), n_keep, replace=False))] = True
    pool, table = _paged(x, page, rng)
    (want, want_lens) = h2o.compact(keep, lens, x)
    got_lens, pages_in_use = h2o.compact_paged(keep, lens, table, pool)
    assert got_lens.tolist() == want_lens.tolist() == [11, 9, 7]
    assert pages_in_use.tolist() == [-(-n // page) for n in (11, 9, 7)]
    got = _gathered(pool, table)
    for b, n in enumerate(got_lens.tolist()):
        assert torch.equal(got[b, :, :n], want[b, :, :n])
    spare = sorted(set(range(pool.shape[0])) - set(table.view(-1).tolist()))
    assert len(spare) == 3 and torch.isnan(pool[spare]).all()  # pages of no sequence: never written


def paged_reference_decode(spec):
    """``(o, lse, weights)`` of a paged cache step in float64."""
    def run(q, k, v, kv_lens, page_table):
        inputs = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "kv_lens": kv_lens.numpy(),
                  "page_table": page_table.numpy()}
        out = data.reference(spec, inputs)
        w = h2o.reference_weights(spec, inputs, out["lse"])
        return torch.from_numpy(out["o"]), torch.from_numpy(out["lse"]), torch.from_numpy(w)
    return run


@pytest.mark.parametrize("group, page", [(1, 4), (2, 8)])
def test_paged_cache_steps_match_the_contiguous_cache(group, page):
    """The same prefill and decode steps through a shuffled paged pool and through a contiguous
    cache: equal outputs, equal kept tokens, and the pages in use follow the length."""
    rng = np.random.default_rng(group)
    B, Hkv, T, D, heavy, recent, prefill = 2, 2, 24, 16, 5, 3, 6
    q = torch.from_numpy(rng.standard_normal((B, Hkv * group, T, D)))
    k = torch.from_numpy(rng.standard_normal((B, Hkv, T, D)))
    v = torch.from_numpy(rng.standard_normal((B, Hkv, T, D)))
    base = dict(num_heads=Hkv * group, num_kv_heads=Hkv, head_dim=D, dtype="float32", phase=Decode(1))
    cap = -(-(heavy + recent + 1) // page) * page
    contiguous = h2o.H2OCache.from_prefill(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill],
                                           capacity=cap, heavy=heavy, recent=recent)
    k_pool, table = _paged(torch.zeros(B, Hkv, cap, D, dtype=torch.float64), page, rng)
    v_pool = torch.full_like(k_pool, float("nan"))
    v_pool[table.long().view(-1)] = 0.0
    paged = h2o.H2OPagedCache.from_prefill(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill],
                                           k_pool=k_pool, v_pool=v_pool, page_table=table, heavy=heavy,
                                           recent=recent)
    ref, ref_paged = reference_decode(Attention(**base)), paged_reference_decode(Attention(**base, kv_layout=Paged(page)))
    for t in range(prefill, T):
        step = (q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], t)
        o_want, o_got = contiguous.step(*step, ref), paged.step(*step, ref_paged)
        np.testing.assert_allclose(o_got.numpy(), o_want.numpy(), rtol=0, atol=1e-12)
        assert torch.equal(paged.attended, contiguous.attended), t
        assert torch.equal(paged.kv_lens, contiguous.kv_lens)
        assert paged.pages_in_use.tolist() == [-(-int(n) // page) for n in paged.kv_lens]
    assert int(paged.kv_lens[0]) == heavy + recent  # evicted down to the budget


def test_paged_cache_needs_room_for_the_budget():
    table = torch.arange(2, dtype=torch.int32).view(1, 2)
    pool = torch.zeros(2, 1, 2, 4)
    with pytest.raises(ValueError, match=r"heavy \+ recent \+ 1"):
        h2o.H2OPagedCache(pool, pool.clone(), table, torch.zeros(1, 1, 4), torch.zeros(1, 1, 4, dtype=torch.int32),
                          torch.zeros(1, dtype=torch.int32), heavy=3, recent=2)
    with pytest.raises(ValueError, match="does not fit"):
        h2o.H2OPagedCache.from_prefill(torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4), torch.zeros(1, 1, 5, 4),
                                       k_pool=pool, v_pool=pool.clone(), page_table=table, heavy=1, recent=1)


def test_bad_policy_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="same count|different counts"):
        h2o.compact(torch.tensor([[[True, False], [True, True]]]), torch.tensor([2]), torch.zeros(1, 2, 2, 1))
    with pytest.raises(ValueError, match="heavy and recent"):
        h2o.keep_mask(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2, dtype=torch.int32), torch.tensor([2]),
                      heavy=-1, recent=1, newest=1)
    with pytest.raises(ValueError, match="capacity"):
        h2o.H2OCache(*(torch.zeros(1, 1, 4, 2),) * 2, torch.zeros(1, 1, 4), torch.zeros(1, 1, 4, dtype=torch.int32),
                     torch.tensor([1]), heavy=2, recent=2)
    with pytest.raises(ValueError, match="decode spec"):
        h2o.check_spec(Attention(num_heads=4, head_dim=64))
    with pytest.raises(ValueError, match="16-byte"):
        h2o.check_spec(Attention(num_heads=4, head_dim=96, phase=Decode(1)))
    with pytest.raises(ValueError, match="over 16"):
        h2o.check_spec(Attention(num_heads=32, num_kv_heads=1, head_dim=64, phase=Decode(1)))


def test_prefill_scores_are_causal_column_sums_per_kv_head():
    rng = np.random.default_rng(5)
    q, k = rng.standard_normal((1, 4, 7, 8)), rng.standard_normal((1, 2, 7, 8))
    got = h2o.prefill_scores(torch.from_numpy(q), torch.from_numpy(k), capacity=9).numpy()
    logits = 8 ** -0.5 * np.einsum("bhid,bhjd->bhij", q, np.repeat(k, 2, axis=1))
    logits = np.where(np.tril(np.ones((7, 7), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(got[..., :7], p.reshape(1, 2, 2, 7, 7).sum((2, 3)), atol=1e-12)
    assert (got[..., 7:] == 0).all()


@pytest.mark.parametrize("name", ["gqa4", "spec4_causal_paged16_sinks"])
def test_reference_weights_sum_to_the_rows_less_the_sinks_share(name):
    spec = SPECS[name]
    rng = np.random.default_rng(7)
    inputs = data.sample(spec, {"batch": 3, "q_len": 1, "kv_len": 40}, rng)
    out = data.reference(spec, inputs)
    w = h2o.reference_weights(spec, inputs, out["lse"])
    rows = spec.group_size * spec.phase.q_len
    total = w.sum(-1)
    if spec.sinks:  # each row gives its sink exp(sink - lse)
        sink = np.exp(inputs["sinks"][None, :, None] - out["lse"]).reshape(3, spec.num_kv_heads, -1).sum(-1)
        np.testing.assert_allclose(total + sink, rows, atol=1e-9)
    else:
        np.testing.assert_allclose(total, rows, atol=1e-9)


# ----------------------------------------------------------------------------- generated code


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("name", ["gqa4", "spec4_causal_paged16_sinks"])
def test_weights_kernel_compiles_without_spills(name, tmp_path):
    source = next(m for m in compile_lowered(h2o.weights_lowered(SPECS[name], SM90), SM90).mod.imports
                  if m.kind == "cuda").inspect_source()
    assert "__shfl_xor_sync" in source
    path = tmp_path / "kernel.cu"
    path.write_text(source)
    out = subprocess.run([NVCC, "-cubin", "-O3", "-arch=sm_90a", "--resource-usage", "-o",
                          str(tmp_path / "kernel.cubin"), str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    spills = re.findall(r"(\d+) bytes spill stores", out.stdout + out.stderr)
    assert spills and all(n == "0" for n in spills)


def test_weights_kernel_is_cuda_only():
    with pytest.raises(ValueError, match="CUDA only"):
        h2o.weights_lowered(SPECS["gqa4"], get_target("cpu"))


# ----------------------------------------------------------------------------- on the GPU


def _to_device(spec, inputs):
    out = {}
    for name, x in inputs.items():
        t = torch.from_numpy(np.ascontiguousarray(x))
        if name in ("q", "k", "v"):
            t = t.to(getattr(torch, spec.dtype))
        out[name] = t.cuda()
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(SPECS))
def test_h2o_decode_weights_on_gpu(name):
    """o, lse as the decode test checks them, and weights against the float64 reference at
    every length, mixed lengths, shuffled pages, NaN past each sequence, poisoned outputs."""
    spec = SPECS[name]
    op = h2o.H2ODecode(spec, "cuda")
    rng = np.random.default_rng(np.random.SeedSequence())
    for length in LENGTHS:
        batch = 4 if length <= 4097 else 2
        inputs = data.sample(spec, {"batch": batch, "q_len": 1, "kv_len": length}, rng)
        feed = _to_device(spec, inputs)
        o, lse = op.attention(**{n: feed[n] for n in op.attention.input_names})
        poisoned = torch.full((batch, spec.num_kv_heads, op.weights.family.sizes(spec, feed)["kv_len"]),
                              float("nan"), device="cuda")
        w = op.weights.run({**{n: feed[n] for n in op.weights.input_names if n != "lse"}, "lse": lse},
                           {"weights": poisoned})["weights"]
        want = h2o.reference_weights(spec, inputs, lse.double().cpu().numpy())
        got = w.double().cpu().numpy()
        assert np.isfinite(got).all(), (name, length)
        # each weight sums up to `rows` probabilities, each computed from fp16/bf16 inputs
        atol = 2e-3 * spec.group_size * spec.phase.q_len
        np.testing.assert_allclose(got, want, rtol=2e-2, atol=atol, err_msg=f"{name} length {length}")


@pytest.mark.gpu
@pytest.mark.parametrize("group", [1, 2])
def test_h2o_cache_steps_on_gpu(group):
    """Prefill then 40 decode steps on the GPU: each step's weights, output and eviction against
    float64 over the same cache (the selection from the kernel's F: fp16 inputs can reorder
    near-ties, so the policy is checked given F, and F against float64)."""
    spec = pipeline_spec(group)
    op = h2o.H2ODecode(spec, "cuda")
    ref = reference_decode(Attention(num_heads=spec.num_heads, num_kv_heads=2, head_dim=64, dtype="float32",
                                     phase=Decode(1)))
    rng = np.random.default_rng(np.random.SeedSequence())
    B, T, heavy, recent, prefill = 3, 60, 8, 6, 10
    q, k, v = (torch.from_numpy(rng.standard_normal(s)).half().cuda()
               for s in ((B, spec.num_heads, T, 64), (B, 2, T, 64), (B, 2, T, 64)))
    cache = h2o.H2OCache.from_prefill(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill],
                                      capacity=heavy + recent + 1, heavy=heavy, recent=recent)
    for t in range(prefill, T):
        before = cache.scores.clone()
        calls = {}

        def decode(**kw):
            calls.update({n: x.clone() for n, x in kw.items()})
            out = op(**kw)
            calls["out"] = out
            return out

        o = cache.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], t, decode)
        cpu = {n: x.double().cpu() for n, x in calls.items() if n != "out"}
        cpu["kv_lens"] = calls["kv_lens"].cpu()
        o_ref, _, w_ref = ref(cpu["q"], cpu["k"], cpu["v"], cpu["kv_lens"])
        np.testing.assert_allclose(o.double().cpu().numpy(), o_ref.numpy(), atol=2e-2, rtol=0)
        w = calls["out"][2]
        np.testing.assert_allclose(w.double().cpu().numpy(), w_ref.numpy(), atol=2e-3 * group, rtol=2e-2)
        # the eviction, recomputed from the kernel's F on the CPU in float64, kept the same tokens
        n = int(calls["kv_lens"][0])
        scores = before.double().cpu()
        scores[..., n - 1] = 0.0  # the new token's slot (every sequence has the same length here)
        scores[..., :n] += w.double().cpu()[..., :n]
        positions = cache.attended.cpu()
        keep = h2o.keep_mask(scores[..., :n], positions, calls["kv_lens"].cpu(), heavy=heavy, recent=recent,
                             newest=t)
        kept = [[sorted(positions[b, h][keep[b, h]].tolist()) for h in range(2)] for b in range(B)]
        now = [[sorted(cache.positions[b, h, :int(cache.kv_lens[b])].tolist()) for h in range(2)] for b in range(B)]
        assert kept == now, t


@pytest.mark.gpu
def test_h2o_paged_cache_steps_on_gpu():
    """A paged H2O cache (shuffled pages, NaN in every page of no sequence) driven by the paged
    decode + weights kernels for 40 steps: each step's output and weights against float64 on
    the same pool, and the pages in use follow the length."""
    spec = paged_pipeline_spec()
    op = h2o.H2ODecode(spec, "cuda")
    ref = paged_reference_decode(Attention(num_heads=4, num_kv_heads=2, head_dim=64, dtype="float32",
                                           phase=Decode(1), kv_layout=Paged(16)))
    rng = np.random.default_rng(np.random.SeedSequence())
    B, T, heavy, recent, prefill, page = 3, 50, 12, 8, 10, 16
    q, k, v = (torch.from_numpy(rng.standard_normal(s)).half().cuda()
               for s in ((B, 4, T, 64), (B, 2, T, 64), (B, 2, T, 64)))
    cap = -(-(heavy + recent + 1) // page) * page
    k_pool, table = _paged(torch.zeros(B, 2, cap, 64, dtype=torch.float16), page, rng)
    v_pool = k_pool.clone()
    cache = h2o.H2OPagedCache.from_prefill(q[:, :, :prefill], k[:, :, :prefill], v[:, :, :prefill],
                                           k_pool=k_pool.cuda(), v_pool=v_pool.cuda(), page_table=table.cuda(),
                                           heavy=heavy, recent=recent)
    for t in range(prefill, T):
        calls = {}

        def decode(**kw):
            calls.update({n: x.clone() for n, x in kw.items()})
            calls["out"] = op(**kw)
            return calls["out"]

        o = cache.step(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], t, decode)
        cpu = {n: (x.double() if x.is_floating_point() else x).cpu() for n, x in calls.items() if n != "out"}
        o_ref, _, w_ref = ref(cpu["q"], cpu["k"], cpu["v"], cpu["kv_lens"], cpu["page_table"])
        np.testing.assert_allclose(o.double().cpu().numpy(), o_ref.numpy(), atol=2e-2, rtol=0)
        n = int(cpu["kv_lens"].max())
        np.testing.assert_allclose(calls["out"][2].double().cpu().numpy()[..., :n], w_ref.numpy()[..., :n],
                                   atol=4e-3, rtol=2e-2)
        assert cache.pages_in_use.tolist() == [-(-int(m) // page) for m in cache.kv_lens.tolist()]
    assert int(cache.kv_lens.max()) == heavy + recent
