"""Diversity metrics (untwine.metrics.diversity) by hand."""
import math

import numpy as np
import pytest

from untwine.metrics.diversity import average_ild, category_coverage, intra_list_distance


def test_intra_list_distance_of_three_vectors_by_hand():
    # cosines: (x, y) 0, (x, x+y) 1/sqrt2, (y, x+y) 1/sqrt2 -> distances 1, 1 - 1/sqrt2, 1 - 1/sqrt2
    vectors = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert intra_list_distance(vectors) == pytest.approx((3 - math.sqrt(2)) / 3)


def test_intra_list_distance_ignores_length_and_spans_zero_to_two():
    assert intra_list_distance([[1.0, 0.0], [5.0, 0.0]]) == pytest.approx(0.0)
    assert intra_list_distance([[1.0, 0.0], [-3.0, 0.0]]) == pytest.approx(2.0)
    assert math.isnan(intra_list_distance([[1.0, 2.0]]))
    with pytest.raises(ValueError):
        intra_list_distance([[1.0, 0.0], [0.0, 0.0]])


def test_average_ild_skips_lists_without_pairs():
    lists = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 0.0]], [[1.0, 1.0]]]  # ILD 1, 0, undefined
    assert average_ild(lists) == pytest.approx(0.5)
    assert math.isnan(average_ild([]))


def test_category_coverage_by_hand():
    categories = [0, 0, 1, 2]
    assert category_coverage(categories, n_categories=5) == pytest.approx(3 / 5)
    assert category_coverage(categories) == pytest.approx(3 / 4)  # distinct / list length
    assert category_coverage([], n_categories=3) == 0.0
    assert math.isnan(category_coverage([]))
    with pytest.raises(ValueError):
        category_coverage([0, 5], n_categories=5)


def test_diversified_list_scores_higher_than_duplicates():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 8))
    near_duplicates = base + 0.01 * rng.normal(size=(5, 8))
    assert intra_list_distance(near_duplicates) < 0.01 < intra_list_distance(rng.normal(size=(5, 8)))
