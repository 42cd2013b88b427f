"""Fate probabilities (issue 23) on branching lineages with a known branch per cell."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from sccohort.errors import InputError
from sccohort.tl import fate_probabilities

BRANCH_POINT = 0.35


def _tree(n: int, seed: int, arms: int = 2, noise: float = 0.02) -> ad.AnnData:
    """A stem, then ``arms`` branches in 5 dimensions; obs: state, arm (truth), pseudotime."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    arm = rng.integers(0, arms, n)
    direction = np.eye(5)[1 : arms + 1]
    x = t[:, None] * np.eye(5)[0] + np.clip(t - BRANCH_POINT, 0, None)[:, None] * direction[arm]
    x += rng.normal(0, noise, x.shape)
    state = np.where(t < BRANCH_POINT, "stem", np.char.add("arm", arm.astype(str)))
    late = t >= 0.75
    state = np.where(late, np.char.add("end", arm.astype(str)), state)
    observed_t = np.clip(t + rng.normal(0, 0.02, n), 0, None)  # a pseudotime with noise
    obs = pd.DataFrame(
        {"state": state, "arm": arm, "pseudotime": observed_t, "t": t},
        index=[f"c{i}" for i in range(n)],
    )
    return ad.AnnData(obs=obs, obsm={"X_pca": x})


@pytest.mark.parametrize(("seed", "arms"), [(0, 2), (1, 2), (2, 3)])
def test_fates_follow_the_planted_branches(seed: int, arms: int) -> None:
    adata = _tree(900, seed, arms)
    table = fate_probabilities(adata, "state", n_neighbors=15)
    ends = [f"end{a}" for a in range(arms)]
    assert sorted(adata.uns["fate"]["terminal_states"]) == ends
    fate = adata.obsm["fate"][ends].to_numpy()
    assert np.allclose(fate.sum(axis=1), 1.0)
    obs = adata.obs
    after = (obs["t"] > BRANCH_POINT + 0.1).to_numpy()
    # cells past the branch point: the planted branch is the most probable fate
    assert (fate[after].argmax(axis=1) == obs["arm"].to_numpy()[after]).mean() >= 0.95
    # the stem's cells have not chosen yet: each fate near 1 / arms
    stem = (obs["t"] < BRANCH_POINT - 0.1).to_numpy()
    assert np.abs(fate[stem] - 1 / arms).max() < 0.15
    # the table: one row per group and terminal state, group means of the probabilities
    assert len(table) == table["group"].nunique() * arms
    row = table[(table["group"] == "arm0") & (table["terminal_state"] == "end0")].iloc[0]
    assert np.isclose(row["mean_probability"], adata.obsm["fate"].loc[obs["state"] == "arm0",
                                                                     "end0"].mean())  # fmt: skip
    assert set(table.loc[table["is_terminal"], "group"]) == set(ends)


def test_given_terminal_states_and_candidates() -> None:
    adata = _tree(600, 3)
    fate_probabilities(adata, "state", terminal_states=["end1"], key_added="one")
    assert adata.uns["one"]["terminal_states"] == ["end1"]
    assert np.allclose(adata.obsm["one"]["end1"], 1.0)  # one absorbing state: sure fate
    # candidates: only the stem and arm0 may end the trajectory -> no sink among them,
    # the candidate with the highest median pseudotime
    fate_probabilities(adata, "state", candidates=["stem", "arm0"], key_added="cand")
    assert adata.uns["cand"]["terminal_states"] == ["arm0"]
    again = _tree(600, 3)
    fate_probabilities(again, "state", terminal_states=["end1"], key_added="one")
    pd.testing.assert_frame_equal(again.obsm["one"], adata.obsm["one"])  # deterministic


def test_unreachable_cells_are_nan() -> None:
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(0, 1, (50, 3)), rng.normal(500, 1, (30, 3))]
    obs = pd.DataFrame(
        {"g": ["a"] * 25 + ["b"] * 25 + ["c"] * 30, "pseudotime": np.linspace(0, 1, 80)},
        index=[f"c{i}" for i in range(80)],
    )
    adata = ad.AnnData(obs=obs, obsm={"X_pca": x})
    fate_probabilities(adata, "g", terminal_states=["b"], n_neighbors=10)
    fate = adata.obsm["fate"]["b"]
    assert fate.iloc[:50].notna().all() and fate.iloc[50:].isna().all()


def test_bad_input_is_named() -> None:
    adata = _tree(200, 0)
    with pytest.raises(InputError, match="terminal_states endX are not groups"):
        fate_probabilities(adata, "state", terminal_states=["endX"])
    with pytest.raises(InputError, match="no column 'dpt'.*run sccohort.tl.pseudotime"):
        fate_probabilities(adata, "state", pseudotime_key="dpt")
    adata.obs.loc["c0", "pseudotime"] = np.inf
    with pytest.raises(InputError, match="missing or infinite"):
        fate_probabilities(adata, "state")
