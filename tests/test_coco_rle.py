"""COCO RLE: round trips on random masks and the exact column-major run layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from protocol.coco import RLEError, rle_area, rle_decode, rle_encode


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 20), st.integers(1, 20))))
def test_round_trip(mask: np.ndarray) -> None:
    rle = rle_encode(mask)
    assert np.array_equal(rle_decode(rle), mask)
    assert rle_area(rle) == int(mask.sum())


def test_column_major_runs_start_with_zeros() -> None:
    mask = np.array([[1, 0], [1, 1]], dtype=bool)  # column-major: 1,1,0,1
    assert rle_encode(mask) == {"size": [2, 2], "counts": [0, 2, 1, 1]}


def test_bad_counts_are_refused() -> None:
    with pytest.raises(RLEError, match="needs 4"):
        rle_decode({"size": [2, 2], "counts": [1, 1]})
