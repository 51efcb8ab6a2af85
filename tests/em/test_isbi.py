"""The shared ISBI 2012 stack (skipped when ../shared/data is absent)."""

import numpy as np
import pytest

from seqmodels.paths import data_path

ISBI = data_path("em", "isbi2012")
pytestmark = pytest.mark.skipif(ISBI is None, reason="../shared/data/em/isbi2012 not found")


def test_isbi_source_instances_are_per_section_components():
    from domains.em.data import load_source

    em = load_source("isbi")
    assert em.raw.shape == em.labels.shape == (30, 512, 512)
    assert em.per_section and em.voxel_size == (50.0, 4.0, 4.0)
    assert em.raw.dtype == np.float32 and em.raw.min() >= 0 and em.raw.max() <= 1
    membrane = em.labels == 0
    assert 0.2 < membrane.mean() < 0.24  # 22.0 % membrane pixels (data README)
    # Raw is darker on membranes (85 vs 138 of 255 in the data README).
    assert em.raw[membrane].mean() < em.raw[~membrane].mean()
    ids0, ids1 = set(np.unique(em.labels[0])), set(np.unique(em.labels[1]))
    assert ids0 & ids1 == {0}  # numbered uniquely per section
