"""The raster baseline's codec and datamodule."""

import numpy as np

from domains.points.raster import OFFSET, RasterDataModule, cells_of, cloud_of
from seqmodels.vocab import Vocab


def test_cells_round_trip_and_raster_order():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, size=(500, 3))
    cells = cells_of(pts, 8)
    assert np.all(np.diff(cells) > 0)  # sorted, unique: the fixed raster order
    back = cloud_of(cells, 8, 300, rng)
    assert set(cells_of(back, 8)) <= set(cells)
    assert len(set(cells_of(cloud_of(cells, 8, 20000, rng), 8))) == len(cells)
    corner = cells_of(np.array([[-1.0, -1.0, 0.99]]), 4)
    assert corner.tolist() == [3]  # x * 16 + y * 4 + z with z in the last cell


def test_datamodule_examples():
    dm = RasterDataModule("synthetic", n_points=128, n_synthetic=2, resolution=6, batch_size=4)
    dm.setup("fit")
    e = dm.splits["train"][0]
    assert e["ids"][0] == Vocab.bos_id and e["ids"][-1] == Vocab.eos_id
    assert min(e["ids"][1:-1]) >= OFFSET and len(e["cond"]) == 5 and sum(e["cond"]) == 1
    assert len(dm.splits["train"]) == len(dm.splits["val"]) == 10
    assert dm.vocab_size == OFFSET + 6**3
