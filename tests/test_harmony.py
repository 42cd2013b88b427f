"""Our Harmony (sccohort.tl.harmony_kernel): batch removal, harmonypy agreement, the kernels."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import NearestNeighbors

from sccohort import tl
from sccohort.errors import InputError
from sccohort.tl import harmony_kernel as hk
from sccohort.tl import harmony_numba as kern


def _cells(
    n_per: int, n_types: int, n_batches: int, shift: float, seed: int, dims: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell types as Gaussian blobs; each batch adds its own constant shift (the batch effect)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (n_types, dims))
    offsets = rng.normal(0, shift, (n_batches, dims))
    types = np.repeat(np.arange(n_types), n_per * n_batches)
    batches = np.tile(np.repeat(np.arange(n_batches), n_per), n_types)
    emb = centres[types] + offsets[batches] + rng.normal(0, 1, (types.size, dims))
    return emb.astype(np.float32), types.astype(str), np.array([f"b{b}" for b in batches])


def _neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    nn = NearestNeighbors(n_neighbors=k + 1).fit(emb)
    return nn.kneighbors(emb, return_distance=False)[:, 1:]


def _other_share(emb: np.ndarray, labels: np.ndarray, k: int = 30) -> float:
    """Mean share of each cell's k nearest neighbours with another label than its own."""
    idx = _neighbours(emb, k)
    return float((labels[idx] != labels[:, None]).mean())


def _overlap(a: np.ndarray, b: np.ndarray, k: int = 15) -> float:
    """Mean share of the k nearest neighbours that two embeddings of the same cells share."""
    na, nb = _neighbours(a, k), _neighbours(b, k)
    return float(np.mean([np.intersect1d(p, q).size / k for p, q in zip(na, nb, strict=True)]))


def _adata(emb: np.ndarray, **obs: np.ndarray) -> ad.AnnData:
    a = ad.AnnData(obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(emb.shape[0])]))
    a.obsm["X_pca"] = emb.copy()
    return a


def test_harmony_removes_a_planted_batch_shift_and_keeps_cell_types() -> None:
    emb, types, batches = _cells(120, 4, 3, shift=3.0, seed=1)
    a = _adata(emb, sample_id=batches)
    tl.harmony(a, "X_pca", batch_key="sample_id", seed=0)
    out = a.obsm["X_harmony"]
    assert out.shape == emb.shape and out.dtype == np.float32
    expected = 1 - 1 / 3  # three equal batches, fully mixed
    assert _other_share(emb, batches) < 0.05
    assert _other_share(out, batches) > 0.75 * expected  # 0.84 x, as harmonypy 2.1
    assert _other_share(out, types) < 0.01  # types stay apart
    info = a.uns["harmony"]
    assert info["batch_key"] == ["sample_id"] and info["converged"]
    assert 1 <= info["n_iterations"] <= info["max_iter"]


def test_harmony_agrees_with_harmonypy() -> None:
    harmonypy = pytest.importorskip("harmonypy")
    emb, types, batches = _cells(150, 5, 4, shift=2.0, seed=3)
    ours = hk.run_harmony(emb, [batches], max_iter_harmony=20, seed=0)
    ref = harmonypy.run_harmony(
        emb.astype(np.float64), pd.DataFrame({"b": batches}), ["b"],
        max_iter_harmony=20, random_state=0, verbose=False,
    )  # fmt: skip
    theirs = np.asarray(ref.Z_corr, dtype=np.float32)
    corr = [np.corrcoef(ours.z_corr[:, i], theirs[:, i])[0, 1] for i in range(emb.shape[1])]
    assert min(corr) > 0.999
    assert _overlap(ours.z_corr, theirs) > 0.9
    for labels in (batches, types):
        assert abs(_other_share(ours.z_corr, labels) - _other_share(theirs, labels)) < 0.02
    # the same objective, up to the random start: within harmonypy's own seed-to-seed spread
    assert ours.objective_harmony[-1] == pytest.approx(ref.objective_harmony[-1], rel=0.05)


def test_harmony_is_deterministic_for_a_seed() -> None:
    emb, _, batches = _cells(80, 3, 3, shift=2.0, seed=4)
    first = hk.run_harmony(emb, [batches], seed=7)
    again = hk.run_harmony(emb, [batches], seed=7)
    assert np.array_equal(first.z_corr, again.z_corr)
    assert first.objective_harmony == again.objective_harmony
    other = hk.run_harmony(emb, [batches], seed=8)
    assert not np.array_equal(first.z_corr, other.z_corr)
    assert _overlap(first.z_corr, other.z_corr) > 0.8


def test_harmony_with_two_batch_keys_and_theta_per_key() -> None:
    emb, types, samples = _cells(60, 3, 4, shift=2.0, seed=5)
    rng = np.random.default_rng(0)
    lanes = rng.choice(["L1", "L2"], emb.shape[0])  # crossed with the samples
    emb = emb + np.where(lanes == "L1", 2.5, -2.5)[:, None].astype(np.float32)
    a = _adata(emb, sample_id=samples, lane=lanes)
    tl.harmony(a, batch_key=["sample_id", "lane"], theta=[2.0, 1.0], seed=0)
    out = a.obsm["X_harmony"]
    # before: 0.07 / 0.0003; after (as harmonypy 2.1): 0.71 of 0.75 / 0.27 of 0.5 (theta 1)
    assert _other_share(emb, samples) < 0.1 and _other_share(out, samples) > 0.6
    assert _other_share(emb, lanes) < 0.01 and _other_share(out, lanes) > 0.2
    assert _other_share(out, types) < 0.01
    assert a.uns["harmony"]["theta"] == [2.0, 1.0]
    tl.harmony(a, batch_key=["sample_id", "lane"], theta=[2.0, 0.0], key_added="X_h0", seed=0)
    assert not np.allclose(a.obsm["X_h0"], out)  # theta acts per key
    harmonypy = pytest.importorskip("harmonypy")
    ref = harmonypy.run_harmony(
        emb.astype(np.float64), a.obs, ["sample_id", "lane"], theta=[2.0, 1.0],
        max_iter_harmony=20, random_state=0, verbose=False,
    )  # fmt: skip
    assert _overlap(out, np.asarray(ref.Z_corr)) > 0.85


def test_harmony_bad_inputs() -> None:
    emb, _, batches = _cells(20, 2, 2, shift=1.0, seed=6)
    a = _adata(emb, sample_id=batches)
    with pytest.raises(InputError, match="no batch column"):
        tl.harmony(a, batch_key="donor")
    with pytest.raises(InputError, match="obsm has no 'X_other'"):
        tl.harmony(a, "X_other")
    with pytest.raises(InputError, match="theta has 2 values for 1 batch columns"):
        tl.harmony(a, theta=[1.0, 2.0])
    a.obsm["X_pca"][3, 1] = np.nan
    with pytest.raises(InputError, match="1 cells with NaN or infinite values"):
        tl.harmony(a)
    one = _adata(emb, sample_id=np.full(emb.shape[0], "s1"))
    with pytest.warns(UserWarning, match="only one batch"):
        tl.harmony(one)
    assert np.array_equal(one.obsm["X_harmony"], emb)
    with pytest.raises(ValueError, match="theta needs one value"):
        hk.run_harmony(emb, [batches], theta=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="lamb must be positive"):
        hk.run_harmony(emb, [batches], lamb=0.0)
    with pytest.raises(ValueError, match="block_size"):
        hk.run_harmony(emb, [batches], block_size=0.0)
    with pytest.raises(ValueError, match="missing labels"):
        hk.run_harmony(emb, [np.where(batches == "b0", None, batches)])


def test_one_cluster_ridge_aligns_the_batch_means() -> None:
    """With one cluster and a vanishing ridge, Harmony moves every batch to the mean of means."""
    emb, _, batches = _cells(50, 1, 3, shift=3.0, seed=7, dims=4)
    res = hk.run_harmony(emb, [batches], n_clusters=1, lamb=1e-6, max_iter_harmony=1)
    means = np.array([emb[batches == b].mean(axis=0) for b in ("b0", "b1", "b2")])
    after = np.array([res.z_corr[batches == b].mean(axis=0) for b in ("b0", "b1", "b2")])
    np.testing.assert_allclose(after, np.broadcast_to(means.mean(axis=0), after.shape), atol=1e-3)


def test_update_round_keeps_the_batch_tallies() -> None:
    """O and E, updated block by block, equal the sums of the final assignments."""
    rng = np.random.default_rng(0)
    n, k = 500, 7
    codes = np.stack([rng.integers(0, 3, n), 3 + rng.integers(0, 2, n)], axis=1)
    counts = np.bincount(codes.ravel(), minlength=5).astype(np.float64)
    pr_b = counts / n
    dist = rng.uniform(0, 4, (n, k)).astype(np.float32)
    r = rng.dirichlet(np.ones(k), n).astype(np.float32)
    o = np.zeros((5, k))
    for c in range(2):
        np.add.at(o, codes[:, c], r.astype(np.float64))
    e = pr_b[:, None] * r.sum(axis=0, dtype=np.float64)
    sigma = np.full(k, 0.1, dtype=np.float32)
    order = hk._block_order(rng, n, hk._blocks(n, 0.05))
    error, entropy = kern.update_round(
        order, hk._blocks(n, 0.05), dist, r, codes, sigma, np.full(5, 2.0), pr_b, o, e
    )
    np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-5)
    want = np.zeros_like(o)
    for c in range(2):
        np.add.at(want, codes[:, c], r.astype(np.float64))
    np.testing.assert_allclose(o, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(e, pr_b[:, None] * r.sum(axis=0, dtype=np.float64), rtol=1e-6)
    r64 = r.astype(np.float64)
    assert error == pytest.approx((r64 * dist).sum(), rel=1e-5)
    assert entropy == pytest.approx((0.1 * r64 * np.log(r64)).sum(), rel=1e-4)


def test_float32_exp_is_accurate() -> None:
    x = -np.linspace(0, 80, 4001).astype(np.float32)
    out = np.empty_like(x)
    bits = np.empty(x.size, dtype=np.int32)
    kern._exp_nonpositive(x, out, bits)  # compiled
    got = out * bits.view(np.float32)
    np.testing.assert_allclose(got, np.exp(x.astype(np.float64)), rtol=3e-7)


def test_parameters_expand_per_batch() -> None:
    levels = [3, 2]
    np.testing.assert_array_equal(hk._per_batch(2.0, levels, "theta"), [2.0] * 5)
    np.testing.assert_array_equal(hk._per_batch([1, 0], levels, "theta"), [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(hk._per_batch(range(5), levels, "theta"), np.arange(5))
    assert hk._blocks(230_000, 0.05) == (20, 11_500)
    assert hk._blocks(10, 0.05) == (20, 1)
    assert hk._converged(-10.0, -10.05, 1e-2) and not hk._converged(-10.0, -9.0, 1e-2)
