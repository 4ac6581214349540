"""The mbarrier protocol of attention_wgmma.j2's `tma` path, simulated in Python over random
interleavings: the producer (one thread) and every consumer warp run their programs as the
template writes them, with mbarrier.try_wait.parity's exact rule (a wait on parity P passes
once the barrier's current phase parity differs from P).  Checked: no deadlock, every wait
sees its own iteration's data (the parity never lets a consumer in a phase early), and the
producer never refills a buffer a warp still reads; with `persistent`, also across a CTA's
tiles (Q released after each tile's last S GEMM).  Also modelled: `pingpong`'s turns (named
barriers 1 and 2, counted in warps: one warpgroup's bar.sync meets the other's bar.arrive) and
`tma_store`'s staging (named barrier 3 + wg; each warpgroup's bulk copy reads its staged rows at
some later moment, and the issuing thread's wait_group.read is the only thing that orders the
next tile's writes after that read)."""
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


def bar_sync(bar):
    """bar.sync: arrive, then wait until this phase completes."""
    parity = bar.phase % 2
    bar.arrive()
    yield ("wait", bar, parity)


class Copies:
    """One thread's bulk async-group: wait_group.read 0 passes once every copy has read."""
    def __init__(self):
        self.in_flight = 0

    def passed(self, _):
        return self.in_flight == 0


class Now:
    def passed(self, _):
        return True


NOW = Now()


def bulk_copy(staged, wg, tile, copies):
    """The copy engine: reads the warpgroup's staged rows at a moment of the scheduler's choice."""
    yield ("wait", NOW, 0)
    assert all(t == tile for t in staged[wg]), f"warpgroup {wg}'s copy of tile {tile} read {staged[wg]}"
    copies.in_flight -= 1


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


def consumer(warp, tiles, overlap, bars, bufs, readers, turns=None, store=None):
    """turns: the ping-pong barriers (None: off); store: the TMA store's shared state (None: off)."""
    wg, issuer = warp // 4, warp % 4 == 0
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
    if turns and wg == 1:  # warpgroup 0 issues first; the turns then run on across tiles
        turns[0].arrive()
    for ti, n_iter in enumerate(tiles):
        yield from take("Q", ti, 0)
        for it in range(g, g + n_iter):
            if overlap:  # K(it) and V(it - 1); S(it) retires, then PV(it - 1)
                yield from take("K", it)
                if it > g:
                    yield from take("V", it - 1)
                if turns:  # this warpgroup's turn on the tensor cores, then the other's
                    yield from bar_sync(turns[wg])
                    turns[1 - wg].arrive()
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
        if store:
            yield from stage_and_store(store, wg, warp, issuer, ti)
    if store and issuer:  # the last copy has read the region before the CTA exits
        yield ("wait", store["copies"][wg], 0)


def stage_and_store(store, wg, warp, issuer, ti):
    """The epilogue of `tma_store` with `persistent` (a region of its own per warpgroup)."""
    group, copies, staged = store["bars"][wg], store["copies"][wg], store["staged"]
    if issuer:  # the previous tile's copy has read the region
        yield ("wait", copies, 0)
    yield from bar_sync(group)
    assert copies.in_flight == 0, f"warp {warp} overwrote rows a copy of warpgroup {wg} still reads"
    staged[wg][warp % 4] = ti
    yield from bar_sync(group)  # after fence.proxy.async: the writes, visible to the copy
    if issuer:
        copies.in_flight += 1
        store["spawn"](bulk_copy(staged, wg, ti, copies))


class Scheduler:
    """The agents (generators yielding ("wait", barrier, parity)), run one step at a time in a
    random order among those whose wait has passed; ``spawn`` adds one, also while running."""
    def __init__(self):
        self.agents, self.waiting = [], {}  # agent -> (barrier, parity) it waits on

    def spawn(self, agent):
        self.agents.append(agent)
        self.waiting[len(self.agents) - 1] = None

    def run(self, seed, what):
        rng = random.Random(seed)
        while self.waiting:
            ready = [i for i, w in self.waiting.items() if w is None or w[0].passed(w[1])]
            assert ready, f"deadlock: {what}"
            i = rng.choice(ready)
            try:
                _, bar, parity = next(self.agents[i])
                self.waiting[i] = (bar, parity)
            except StopIteration:
                del self.waiting[i]


def turn_barriers():
    """Named barriers 1 and 2 of the ping-pong, counted in warps (bar.sync / bar.arrive of 256)."""
    return Barrier(8), Barrier(8)


def run(tiles, warpgroups, overlap, seed, pingpong=False, tma_store=False):
    warps = 4 * warpgroups
    bars = {("full", x, j): Barrier(1) for x in "KV" for j in (0, 1)}
    bars.update({("empty", x, j): Barrier(warps) for x in "KV" for j in (0, 1)})
    bars.update({("full", "Q", 0): Barrier(1), ("empty", "Q", 0): Barrier(warps)})
    bufs = {(x, j): None for x in "KV" for j in (0, 1)}
    bufs["Q", 0] = None
    readers = {key: set() for key in bufs}
    turns = turn_barriers() if pingpong else None
    sched = Scheduler()
    sched.spawn(producer(tiles, bars, bufs, readers))
    store = None
    if tma_store:
        store = {"bars": [Barrier(4) for _ in range(warpgroups)],
                 "copies": [Copies() for _ in range(warpgroups)],
                 "staged": [[None] * 4 for _ in range(warpgroups)], "spawn": sched.spawn}
    for w in range(warps):
        sched.spawn(consumer(w, tiles, overlap, bars, bufs, readers, turns, store))
    sched.run(seed, f"tiles {tiles}, {warpgroups} warpgroups, overlap {overlap}, "
                    f"pingpong {pingpong}, tma_store {tma_store}")


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


@pytest.mark.parametrize("pingpong, tma_store", [(True, False), (False, True), (True, True)])
def test_turns_and_the_store_across_persistent_tiles(pingpong, tma_store):
    """Ping-pong's named barriers and the TMA store's staging, over a CTA's tiles of uneven
    lengths (empty ones too), under random interleavings with the copies reading late."""
    rng = random.Random(11)
    for seed in range(80):
        tiles = [rng.randrange(0, 5) for _ in range(rng.randrange(1, 5))]
        run(tiles, 2 if pingpong else rng.choice((1, 2)), True, seed, pingpong, tma_store)


def test_the_model_catches_a_store_without_the_read_wait():
    """Without the issuer's wait_group.read before the region's next use, a warp overwrites
    rows the previous tile's copy has not read yet."""
    global stage_and_store
    original = stage_and_store

    def hasty(store, wg, warp, issuer, ti):
        group, copies, staged = store["bars"][wg], store["copies"][wg], store["staged"]
        yield from bar_sync(group)
        assert copies.in_flight == 0, "overwrote"
        staged[wg][warp % 4] = ti
        yield from bar_sync(group)
        if issuer:
            copies.in_flight += 1
            store["spawn"](bulk_copy(staged, wg, ti, copies))

    stage_and_store = hasty
    try:
        with pytest.raises(AssertionError, match="overwrote|read"):
            for seed in range(80):
                run([1, 1, 1], 1, True, seed, tma_store=True)
    finally:
        stage_and_store = original


def test_the_model_catches_a_missing_first_turn():
    """One arrival short on warpgroup 0's turn barrier (as without warpgroup 1's arrival before
    the loop): the turns never start, and the model says so."""
    global turn_barriers
    original = turn_barriers

    class FirstArrivalLost(Barrier):
        def arrive(self):
            if getattr(self, "lost", False):
                super().arrive()
            self.lost = True

    turn_barriers = lambda: (FirstArrivalLost(8), Barrier(8))  # noqa: E731
    try:
        with pytest.raises(AssertionError, match="deadlock"):
            run([3, 2], 2, True, 0, pingpong=True)
    finally:
        turn_barriers = original


def test_the_model_catches_a_wrong_parity():
    """The check has teeth: consumers waiting on the parity of the previous use read early."""
    global consumer
    original = consumer

    def early(warp, tiles, overlap, bars, bufs, readers, *off):
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


def cluster_producer(cta, n_iter, bars, bufs, readers, spawn):
    """`cluster`: CTA `cta`'s producer.  Use `it` of buffer j: wait for its own empty barrier
    (both CTAs' warps arrive there), expect the whole tile on its own full barrier, then issue
    its half, multicast: the copy lands in both CTAs at moments of the scheduler's choice."""
    for it in range(n_iter):
        for x in "KV":
            j = it % 2
            if it >= 2:
                yield ("wait", bars[cta]["empty", x, j], (it // 2 - 1) % 2)
            bars[cta]["full", x, j].arrive()  # arrive.expect_tx: the arrival of the phase
            for dst in (0, 1):
                spawn(landing(dst, cta, x, j, it, bars, bufs, readers))


def landing(dst, half, x, j, it, bars, bufs, readers):
    """One half of a multicast copy landing in CTA `dst` (complete_tx on its full barrier)."""
    yield ("wait", NOW, 0)
    assert not readers[dst][x, j], f"CTA {dst}'s {x}({j}) overwritten while warps {readers[dst][x, j]} read it"
    bufs[dst][x, j][half] = it
    bars[dst]["full", x, j].arrive()


def cluster_consumer(cta, warp, n_iter, bars, bufs, readers):
    """The overlap schedule's waits and releases; each release arrives on both CTAs' empty."""
    def take(x, it):
        j = it % 2
        yield ("wait", bars[cta]["full", x, j], it // 2 % 2)
        assert bufs[cta][x, j] == [it, it], f"CTA {cta} warp {warp} read {x}{bufs[cta][x, j]} for use {it}"
        readers[cta][x, j].add(warp)

    def release(x, it):
        j = it % 2
        readers[cta][x, j].discard(warp)
        for other in (0, 1):
            bars[other]["empty", x, j].arrive()

    for it in range(n_iter):
        yield from take("K", it)
        if it > 0:
            yield from take("V", it - 1)
        release("K", it)
        if it > 0:
            release("V", it - 1)
    if n_iter > 0:
        yield from take("V", n_iter - 1)
        release("V", n_iter - 1)


def run_cluster(n_iter, warpgroups, seed):
    warps = 4 * warpgroups
    # full: the producer's arrival and the two halves' landings; empty: both CTAs' warps
    bars = [{**{("full", x, j): Barrier(3) for x in "KV" for j in (0, 1)},
             **{("empty", x, j): Barrier(2 * warps) for x in "KV" for j in (0, 1)}} for _ in (0, 1)]
    bufs = [{(x, j): [None, None] for x in "KV" for j in (0, 1)} for _ in (0, 1)]
    readers = [{(x, j): set() for x in "KV" for j in (0, 1)} for _ in (0, 1)]
    sched = Scheduler()
    for cta in (0, 1):
        sched.spawn(cluster_producer(cta, n_iter, bars, bufs, readers, sched.spawn))
        for w in range(warps):
            sched.spawn(cluster_consumer(cta, w, n_iter, bars, bufs, readers))
    sched.run(seed, f"cluster, {n_iter} key tiles, {warpgroups} warpgroups")


@pytest.mark.parametrize("warpgroups", [1, 2])
def test_cluster_multicast_orders_both_ctas(warpgroups):
    """`cluster`: two CTAs, each loading half of every K/V tile into both; no deadlock, every
    read sees both halves of its own use, no half lands in a buffer either CTA still reads."""
    for n_iter in range(7):
        for seed in range(40):
            run_cluster(n_iter, warpgroups, seed)


def test_the_model_catches_a_release_to_one_cta_only():
    """If a warp released only its own CTA's buffer, the peer's producer would multicast into
    a buffer this CTA still reads (or the barriers would never fill)."""
    global cluster_consumer
    original = cluster_consumer

    def local_only(cta, warp, n_iter, bars, bufs, readers):
        for it in range(n_iter):
            for x in "KV":
                j = it % 2
                yield ("wait", bars[cta]["full", x, j], it // 2 % 2)
                assert bufs[cta][x, j] == [it, it], "early"
                bars[cta]["empty", x, j].arrive()
                bars[cta]["empty", x, j].arrive()  # twice on its own: the count still fills

    cluster_consumer = local_only
    try:
        with pytest.raises(AssertionError, match="early|overwritten|deadlock"):
            for seed in range(80):
                run_cluster(5, 1, seed)
    finally:
        cluster_consumer = original
