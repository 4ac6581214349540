"""The mbarrier protocol of attention_wgmma.j2's `tma` path, simulated in Python over random
interleavings: the producer (one thread) and every consumer warp run their programs as the
template writes them, with mbarrier.try_wait.parity's exact rule (a wait on parity P passes
once the barrier's current phase parity differs from P).  Checked: no deadlock, every wait
sees its own iteration's data (the parity never lets a consumer in a phase early), and the
producer never refills a buffer a warp still reads; with `persistent`, also across a CTA's
tiles (Q released after each tile's last S GEMM)."""
import random

import pytest


class Barrier:
    def __init__(self, count):
        self.count, self.pending, self.phase = count, 0, 0  # phase: completed phases

    def arrive(self):
        self.pending += 1
        if self.pending == self.count:
            self.pending, self.phase = 0, self.phase + 1

    def passed(self, parity):
        return self.phase % 2 != parity


def producer(tiles, bars, bufs, readers):
    """tiles: each tile's key-tile count (one tile unless persistent)."""
    g = 0  # K/V buffer uses before this tile
    for ti, n_iter in enumerate(tiles):
        if ti >= 1:  # persistent: the consumers are done with the previous tile's Q
            yield ("wait", bars["empty", "Q", 0], (ti - 1) % 2)
        assert not readers["Q", 0], f"Q refilled while warps {readers['Q', 0]} read it"
        bufs["Q", 0] = ti
        bars["full", "Q", 0].arrive()
        for it in range(g, g + n_iter):
            for x in "KV":  # the template's order: K(it), then V(it)
                j = it % 2
                if it >= 2:
                    yield ("wait", bars["empty", x, j], (it // 2 - 1) % 2)
                assert not readers[x, j], f"refill of {x}({j}) while warps {readers[x, j]} read it"
                bufs[x, j] = it  # the copy lands (bytes and the expect_tx arrival complete the phase)
                bars["full", x, j].arrive()
        g += n_iter


def consumer(warp, tiles, overlap, bars, bufs, readers):
    def take(x, it, j=None):
        j = it % 2 if j is None else j
        yield ("wait", bars["full", x, j], it // 2 % 2 if x != "Q" else it % 2)
        assert bufs[x, j] == it, f"warp {warp} read {x}({bufs[x, j]}) for use {it}"
        readers[x, j].add(warp)

    def release(x, it, j=None):
        j = it % 2 if j is None else j
        readers[x, j].discard(warp)
        bars["empty", x, j].arrive()

    g = 0
    for ti, n_iter in enumerate(tiles):
        yield from take("Q", ti, 0)
        for it in range(g, g + n_iter):
            if overlap:  # K(it) and V(it - 1); S(it) retires, then PV(it - 1)
                yield from take("K", it)
                if it > g:
                    yield from take("V", it - 1)
                release("K", it)
                if it > g:
                    release("V", it - 1)
            else:  # K(it), S retires; V(it), PV retires
                yield from take("K", it)
                release("K", it)
                yield from take("V", it)
                release("V", it)
        release("Q", ti, 0)  # every S GEMM of the tile has retired
        if overlap and n_iter > 0:  # PV(last); its buffer's next use may be the next tile's
            yield from take("V", g + n_iter - 1)
            release("V", g + n_iter - 1)
        g += n_iter


def run(tiles, warpgroups, overlap, seed):
    warps = 4 * warpgroups
    bars = {("full", x, j): Barrier(1) for x in "KV" for j in (0, 1)}
    bars.update({("empty", x, j): Barrier(warps) for x in "KV" for j in (0, 1)})
    bars.update({("full", "Q", 0): Barrier(1), ("empty", "Q", 0): Barrier(warps)})
    bufs = {(x, j): None for x in "KV" for j in (0, 1)}
    bufs["Q", 0] = None
    readers = {key: set() for key in bufs}
    agents = [producer(tiles, bars, bufs, readers)]
    agents += [consumer(w, tiles, overlap, bars, bufs, readers) for w in range(warps)]
    waiting = {i: None for i in range(len(agents))}  # agent -> (barrier, parity) it waits on
    rng = random.Random(seed)
    while waiting:
        ready = [i for i, w in waiting.items() if w is None or w[0].passed(w[1])]
        assert ready, f"deadlock: tiles {tiles}, {warpgroups} warpgroups, overlap {overlap}"
        i = rng.choice(ready)
        try:
            _, bar, parity = next(agents[i])
            waiting[i] = (bar, parity)
        except StopIteration:
            del waiting[i]


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("warpgroups", [1, 2])
def test_the_tma_barriers_order_every_copy_and_read(warpgroups, overlap):
    for n_iter in range(9):
        for seed in range(40):
            run([n_iter], warpgroups, overlap, seed)


@pytest.mark.parametrize("overlap", [True, False])
def test_persistent_tiles_carry_the_phases_across(overlap):
    """persistent: one CTA's tiles in a row, of uneven lengths (empty ones too); the K/V use
    count and the Q phases run on across them."""
    rng = random.Random(7)
    for seed in range(60):
        tiles = [rng.randrange(0, 6) for _ in range(rng.randrange(1, 6))]
        run(tiles, rng.choice((1, 2)), overlap, seed)


def test_the_model_catches_a_wrong_parity():
    """The check has teeth: consumers waiting on the parity of the previous use read early."""
    global consumer
    original = consumer

    def early(warp, tiles, overlap, bars, bufs, readers):
        for it in range(tiles[0]):
            yield ("wait", bars["full", "K", it % 2], (it // 2 + 1) % 2)
            assert bufs["K", it % 2] == it, "early"
            bars["empty", "K", it % 2].arrive()
            bars["empty", "V", it % 2].arrive()

    consumer = early
    try:
        with pytest.raises(AssertionError, match="early|deadlock"):
            for seed in range(40):
                run([5], 1, False, seed)
    finally:
        consumer = original
