"""`attngen show --tiles`: the tile map counts what the kernel does with each tile."""
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np

from attngen import Attention, masks
from attngen.targets import get
from attngen.visual import classify, tile_counts, visited_tiles


def test_causal_tile_map_by_hand():
    spec = Attention(num_heads=2, head_dim=64, mask=masks.causal())
    n, bm, bn = 200, 64, 64  # 4 x 4 tiles, the last row/column partly outside
    mask = np.tril(np.ones((n, n), bool))
    kinds = classify(tile_counts(mask, bm, bn), visited_tiles(spec, n, bm, bn))
    for i in range(4):
        for j in range(4):
            want = "skipped" if j > i else "partial" if j == i else "full"
            assert kinds[i, j] == want, (i, j, kinds)


def test_window_skips_far_tiles_and_visits_every_visible_one():
    spec = Attention(num_heads=2, head_dim=64, mask=masks.sliding_window(100))
    n, bm, bn = 500, 32, 32
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    mask = (k <= q) & (q - k < 100)
    counts = tile_counts(mask, bm, bn)
    visited = visited_tiles(spec, n, bm, bn)
    assert not np.any((counts[0] > 0) & ~visited), "a tile with visible keys is skipped"
    assert visited.sum() < visited.size / 2


def test_cli_writes_an_svg(tmp_path):
    out = tmp_path / "tiles.svg"
    run = subprocess.run([sys.executable, "-m", "attngen", "show", "document", "--tiles", str(out),
                          "--length", "300"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "skipped" in run.stdout and "runtime tensors drawn at random" in run.stdout
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg") and len(root) > 10


def test_tile_shape_follows_the_schedule():
    from attngen.gallery import GALLERY
    from attngen.visual import tile_shape

    gqa = Attention(num_heads=8, num_kv_heads=2, head_dim=64)
    m, n = tile_shape(gqa, get("cpu"))
    assert m >= 1 and n >= 4
    # sm_90a runs the wgmma kernel: two warpgroups of 128 rows, or one of 64 beside a tile map
    # without a static part
    assert tile_shape(GALLERY["causal"].spec, get("cuda-sm90a")) == (128, 128)
    assert tile_shape(GALLERY["block_sparse"].spec, get("cuda-sm90a")) == (64, 64)
    assert tile_shape(GALLERY["document"].spec, get("cuda-sm90a")) == (128, 128)


def test_a_tile_map_visits_no_empty_tile_and_marks_the_static_partials():
    """The tensor-core kernel loops over the map's non-empty tiles; a partial tile where the
    causal conjunct alone decides (inside one document) is drawn as "static", and is exactly
    that: the mask there equals the causal mask."""
    from attngen.gallery import GALLERY
    from attngen.tune.space import default_config
    from attngen.visual import tile_kinds

    spec, n = GALLERY["document"].spec, 600
    config = default_config(spec, get("cuda-sm90a"))
    mask, kinds = tile_kinds(spec, config, n, np.random.default_rng(0))
    assert config["tile_map"] and "empty" not in kinds and (kinds == "static").any()
    causal = np.tril(np.ones((n, n), bool))
    bm, bn = config["warps"] * 16, config["block_n"]
    for i, j in zip(*np.nonzero(kinds == "static")):
        rows, keys = slice(i * bm, (i + 1) * bm), slice(j * bn, (j + 1) * bn)
        assert (mask[rows, keys] == causal[rows, keys]).all(), (i, j)
    for i, j in zip(*np.nonzero(kinds == "partial")):  # here the document ids matter
        rows, keys = slice(i * bm, (i + 1) * bm), slice(j * bn, (j + 1) * bn)
        assert (mask[rows, keys] != causal[rows, keys]).any(), (i, j)
    # without the map (the SIMT kernel's band) the same mask has empty tiles that are visited
    _, band = tile_kinds(spec, {**config, "tile_map": False}, n, np.random.default_rng(0))
    assert "empty" in band and "static" not in band
