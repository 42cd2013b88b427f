"""The one multiple-testing module: every adjustment against statsmodels / R's p.adjust."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from sccohort.errors import InputError
from sccohort.stats import adjust_pvalues, spatial_fdr


@pytest.mark.parametrize(("method", "theirs"), [("bh", "fdr_bh"), ("bonferroni", "bonferroni"),
                                                ("holm", "holm")])  # fmt: skip
def test_adjustments_match_statsmodels(method: str, theirs: str) -> None:
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 1e-3, size=20), [0.5, 0.5, 0.5]])
    ours = adjust_pvalues(p, method)
    np.testing.assert_allclose(ours, multipletests(p, method=theirs)[1], rtol=1e-12)
    assert (ours >= p).all() and (ours <= 1).all()


def test_nan_is_left_out_and_kept() -> None:
    p = np.array([0.01, np.nan, 0.02, 0.04])
    out = adjust_pvalues(p)
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], adjust_pvalues(p[[0, 2, 3]]))
    assert np.isnan(adjust_pvalues(np.array([np.nan]))).all()
    assert adjust_pvalues(np.array([])).shape == (0,)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(InputError, match="unknown multiple-testing method"):
        adjust_pvalues(np.array([0.1]), "fdr")  # type: ignore[arg-type]


def test_spatial_fdr_with_equal_weights_is_bh() -> None:
    p = np.random.default_rng(1).uniform(size=50)
    np.testing.assert_allclose(spatial_fdr(p, np.ones(50)), adjust_pvalues(p), rtol=1e-12)
