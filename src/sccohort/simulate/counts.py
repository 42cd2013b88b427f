"""Counts of one simulated sample: RNA (sparse, gamma-Poisson) and antibodies, with artefacts.

RNA counts are generated sparsely. Each droplet gets a library size; its mitochondrial
UMIs are Poisson over the 13 MT- genes; of the rest, the ~1,000 most expressed genes are
drawn densely as gamma-Poisson (negative binomial, gene-wise dispersion, per-cell gamma
noise), and the long tail of rarely detected genes by drawing that many UMIs as gene
indices from the cell's profile (cumulative sum + searchsorted) and counting them.
Heterotypic doublets are the sum of two simulated cells of different l1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.simulate.biology import EGR1_PROGRAM, SUBSETS, Biology, build_biology
from sccohort.simulate.design import (
    SampleSpec,
    SimParams,
    donor_shares,
    expected_shares,
    program_fold,
    share_folds,
)
from sccohort.simulate.proteins import ambient_levels, protein_levels, protein_targets
from sccohort.simulate.stimulation import MYELOID_POWER, ifn_folds, ifn_genes

_CHUNK = 2048  # rows per dense block of the highly expressed genes
_LIBRARY_SD = 0.4  # per-cell log-library SD
_SAMPLE_LIBRARY_SD = 0.15  # per-sample log-library SD
_EMPTY_UMIS = 30.0  # median UMIs of an empty droplet
_PROTEIN_THETA = 8.0  # NB shape of specific antibody counts


@dataclass
class SampleCounts:
    """Simulated droplets of one sample.

    Attributes
    ----------
    barcodes
        Cell barcodes (n_cells,), sorted, 10x style (``ACGT...-1``).
    rna
        CSR (n_cells, n_genes) int32 counts.
    adt
        Dense (n_cells, n_antibodies) int32 counts.
    truth
        Per cell: ``cell_id, sample_id, l1, l2, subset, doublet, low_quality, contaminant``.
    empty_barcodes, empty_rna, empty_adt
        The same for the empty droplets of the raw matrix.
    composition
        Per subset: ``subset, expected_share, donor_share``.
    """

    barcodes: np.ndarray
    rna: sp.csr_matrix
    adt: np.ndarray
    truth: pd.DataFrame
    empty_barcodes: np.ndarray
    empty_rna: sp.csr_matrix
    empty_adt: np.ndarray
    composition: pd.DataFrame


def biology() -> Biology:
    """The simulator's biology, with antibody targets kept out of the random programs."""
    return build_biology(protein_targets())


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _barcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` unique sorted 10x barcodes (``<16 nt>-1``) as a bytes array."""
    codes = np.unique(rng.integers(0, 4**16, size=n + n // 50 + 16, dtype=np.int64))
    while codes.size < n:
        codes = np.unique(np.concatenate([codes, rng.integers(0, 4**16, n, dtype=np.int64)]))
    codes = np.sort(rng.choice(codes, size=n, replace=False))
    digits = (codes[:, None] >> (2 * np.arange(15, -1, -1, dtype=np.int64))) & 3
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)[digits]
    nt = np.ascontiguousarray(letters).view("S16").ravel()
    return np.char.add(nt, b"-1")


def _draw_genes(
    rng: np.random.Generator, cum: np.ndarray, n_umis: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n_umis[i]`` UMIs for each row ``i`` from one cumulative gene distribution.

    Uniforms are offset by their row and sorted, so the binary searches walk the gene
    axis in order (cache friendly) and each row's genes come out sorted; equal genes are
    then run-length counted. Returns ``(row, position in cum, count)`` arrays, sorted by
    row then position, without duplicates.
    """
    row = np.repeat(np.arange(n_umis.size, dtype=np.int64), n_umis)
    key = row + rng.random(row.size)
    key.sort()
    pos = np.minimum(np.searchsorted(cum, key - row, side="right"), cum.size - 1)
    code = row * cum.size + pos
    starts = np.flatnonzero(np.concatenate([[code.size > 0], code[1:] != code[:-1]]))
    counts = np.diff(np.append(starts, code.size))
    return row[starts], pos[starts], counts


def _canonical_csr(
    rows: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray], shape: tuple
) -> sp.csr_matrix:
    """CSR int32 matrix from COO pieces without duplicates.

    Each row's entries must be contiguous and column-sorted; the stable row bucketing of
    the conversion then keeps them canonical.
    """
    coo = sp.coo_matrix(
        (
            np.concatenate(vals).astype(np.int32),
            (np.concatenate(rows).astype(np.int32), np.concatenate(cols).astype(np.int32)),
        ),
        shape=shape,
    )
    out = coo.tocsr()
    if not out.has_canonical_format:  # linear check; sorts only if a piece broke the order
        out.sort_indices()
    return out


def _rna_counts(
    rng: np.random.Generator,
    bio: Biology,
    profiles: np.ndarray,
    group: np.ndarray,
    lib_nonmt: np.ndarray,
    lib_mt: np.ndarray,
) -> sp.csr_matrix:
    """Sparse gamma-Poisson RNA counts of cells, shape (n_cells, n_genes), int32.

    ``profiles`` (n_groups, n_genes) are non-MT probabilities; cell ``i`` draws from
    ``profiles[group[i]]`` with ``lib_nonmt[i]`` expected non-MT and ``lib_mt[i]`` MT UMIs.
    The most expressed genes get per-cell gamma noise (negative binomial counts); the long
    tail is Poisson, drawn as gene indices. The dense, tail and MT parts are each built in
    canonical (row, column sorted) order and merged, so nothing needs sorting.
    """
    n, n_genes = group.size, profiles.shape[1]
    high, low = bio.high_index, bio.low_index
    shape = 1.0 / bio.dispersion
    parts: dict[str, tuple[list, list, list]] = {"high": ([], [], []), "low": ([], [], [])}
    for k in np.unique(group):
        members = np.flatnonzero(group == k)
        p = profiles[k]
        ph = p[high]
        for start in range(0, members.size, _CHUNK):
            chunk = members[start : start + _CHUNK]
            lam = rng.gamma(shape, bio.dispersion, size=(chunk.size, high.size))
            lam *= lib_nonmt[chunk, None] * ph[None, :]
            c = rng.poisson(lam)
            r, j = np.nonzero(c)
            for lst, v in zip(parts["high"], (chunk[r], high[j], c[r, j]), strict=True):
                lst.append(v)
        pl = p[low]
        cum = np.cumsum(pl)
        cum /= cum[-1]
        r, j, c = _draw_genes(rng, cum, rng.poisson(lib_nonmt[members] * pl.sum()))
        for lst, v in zip(parts["low"], (members[r], low[j], c), strict=True):
            lst.append(v)
    c = rng.poisson(lib_mt[:, None] * bio.mt_profile[None, :])
    r, j = np.nonzero(c)
    out = _canonical_csr([r], [bio.mt_index[j]], [c[r, j]], (n, n_genes))
    for rows, cols, vals in parts.values():
        out = out + _canonical_csr(rows, cols, vals, (n, n_genes))
    return out


def _empty_counts(
    rng: np.random.Generator, bio: Biology, ambient: np.ndarray, lib: np.ndarray, mt: np.ndarray
) -> sp.csr_matrix:
    """Poisson RNA counts of empty droplets from the ambient profile, (n_empty, n_genes)."""
    n_genes = ambient.size
    rows, cols, vals = [], [], []
    cum = np.cumsum(ambient)
    cum /= cum[-1]
    r, j, c = _draw_genes(rng, cum, rng.poisson(lib * (1 - mt)))
    rows.append(r)
    cols.append(j)
    vals.append(c)
    c = rng.poisson((lib * mt)[:, None] * bio.mt_profile[None, :])
    r, j = np.nonzero(c)
    rows.append(r)
    cols.append(bio.mt_index[j])
    vals.append(c[r, j])
    return _canonical_csr(rows, cols, vals, (lib.size, n_genes))


def _sample_profiles(
    bio: Biology,
    params: SimParams,
    design: str,
    spec: SampleSpec,
    seed: int,
    donor_idx: int,
    batch_idx: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profiles of one sample, (n_subsets, n_genes), and its antibody multipliers.

    The profiles carry the donor's and the lane's gene noise, the sample's EGR1 program
    fold and, in a stimulated sample of design ``stim``, the interferon response; the
    multipliers (n_antibodies,) are donor x lane protein noise and the lane's ambient scale.
    """
    n_genes = bio.profiles.shape[1]
    d_rng = _rng(seed, 1, donor_idx)
    b_rng = _rng(seed, 2, batch_idx)
    donor_gene = np.exp(d_rng.normal(0.0, params.donor_noise, n_genes))
    batch_gene = np.exp(b_rng.normal(0.0, params.batch_noise, n_genes))
    n_ab = len(ambient_levels())
    donor_prot = np.exp(d_rng.normal(0.0, params.donor_noise / 2, n_ab))
    batch_prot = np.exp(b_rng.normal(0.0, params.batch_noise, n_ab))
    batch_ambient = np.exp(b_rng.normal(0.0, 0.2))
    prof = bio.profiles * (donor_gene * batch_gene)[None, :]
    fold = program_fold(design, params, spec)
    if fold != 1.0:
        mono = [i for i, s in enumerate(SUBSETS) if s.l1 == "Mono"]
        prog = bio.idx(EGR1_PROGRAM)
        prof[np.ix_(mono, prog)] *= fold
    if design == "stim" and spec.timepoint == "stim":
        genes = [g for g in ifn_genes() if g in bio.symbol_index]
        gene_folds = ifn_folds(genes, params.ifn_fold)
        myeloid = np.array([s.l1 in ("Mono", "DC") for s in SUBSETS])
        power = np.where(myeloid, MYELOID_POWER, 1.0)[:, None]
        prof[:, bio.idx(genes)] *= gene_folds[None, :] ** power
    prof /= prof.sum(axis=1, keepdims=True)
    return prof, donor_prot * batch_prot, np.full(n_ab, batch_ambient)


# long: one random stream drawn in a fixed order; split, that order would be hidden
def simulate_sample(  # noqa: PLR0915 - see the comment above
    spec: SampleSpec,
    donor: pd.Series,
    design: str,
    params: SimParams,
    n_cells: int,
    seed: int,
    donor_idx: int,
    batch_idx: int,
) -> SampleCounts:
    """Simulate every droplet of one sample.

    Parameters
    ----------
    spec
        The sample (id, donor, timepoint, lane).
    donor
        The donor's clinical row (``group, age, SRC, ILD, ...``).
    design
        ``"paper"`` or ``"null"``.
    params
        Simulation parameters.
    n_cells
        Number of cell-containing barcodes (filtered matrix rows).
    seed
        Cohort seed; the sample, its donor and its lane get their own streams from it, so
        a sample does not depend on the order in which samples are generated.
    donor_idx, batch_idx
        Stable indices of the donor and the lane.

    Returns
    -------
    SampleCounts
    """
    bio = biology()
    rng = _rng(seed, 0, spec.index)
    names = [s.name for s in SUBSETS]
    l1 = np.array([s.l1 for s in SUBSETS])
    n_sub = len(SUBSETS)
    folds = share_folds(design, params, spec, donor)
    age = float(donor["age"])
    share = donor_shares(params, age, folds, _rng(seed, 3, donor_idx))
    expected = expected_shares(params, age, folds)
    prof, prot_mult, amb_mult = _sample_profiles(
        bio, params, design, spec, seed, donor_idx, batch_idx
    )

    # Droplet contents: subsets, doublet partners of another l1, low-quality cells.
    cell_sub = rng.choice(n_sub, size=n_cells, p=share)
    doublet = rng.random(n_cells) < params.doublet_rate
    partner = np.zeros(int(doublet.sum()), dtype=np.int64)
    first_l1 = l1[cell_sub[doublet]]
    for lv in np.unique(first_l1):
        p = np.where(l1 != lv, share, 0.0)
        sel = first_l1 == lv
        partner[sel] = rng.choice(n_sub, size=int(sel.sum()), p=p / p.sum())
    contaminant = np.array([s.contaminant for s in SUBSETS], dtype=object)[cell_sub]
    eligible = ~doublet & (contaminant == "")
    p_lq = min(1.0, params.low_quality_rate / max(eligible.mean(), 1e-9))
    low_quality = eligible & (rng.random(n_cells) < p_lq)

    atom_sub = np.concatenate([cell_sub, partner])
    n_atoms = atom_sub.size
    atom_lq = np.concatenate([low_quality, np.zeros(partner.size, bool)])
    median = np.array([s.library for s in SUBSETS]) * params.library_scale
    offset = rng.normal(0.0, _SAMPLE_LIBRARY_SD)
    lib = np.exp(np.log(median[atom_sub]) + offset + rng.normal(0.0, _LIBRARY_SD, n_atoms))
    mt = rng.beta(9.0, 190.0, n_atoms)
    n_lq = int(atom_lq.sum())
    lib[atom_lq] *= rng.uniform(0.1, 0.35, n_lq)
    mt[atom_lq] = rng.uniform(0.2, 0.6, n_lq)

    # Ambient RNA: the sample's composition-weighted mean profile, in every droplet.
    weight = share * median
    ambient = weight @ prof / weight.sum()
    a = params.ambient_fraction
    groups = (1.0 - a) * prof + a * ambient[None, :]
    rna_atoms = _rna_counts(rng, bio, groups, atom_sub, lib * (1 - mt), lib * mt)
    n_empty = int(params.n_empty)
    lib_empty = np.exp(rng.normal(np.log(_EMPTY_UMIS), 0.6, n_empty))
    empty_rna = _empty_counts(rng, bio, ambient, lib_empty, rng.beta(4.0, 40.0, n_empty))

    # Doublets: add the partner's counts to the first cell.
    d_rows = np.flatnonzero(doublet)
    to_first = sp.csr_matrix(
        (np.ones(d_rows.size, dtype=np.int32), (d_rows, np.arange(d_rows.size))),
        shape=(n_cells, d_rows.size),
    )
    rna = (rna_atoms[:n_cells] + (to_first @ rna_atoms[n_cells:]).tocsr()).tocsr()
    rna.sort_indices()
    sel = sp.hstack([sp.identity(n_cells, dtype=np.int32, format="csr"), to_first], "csr")

    # Antibodies: specific NB signal following the target genes, plus ambient background.
    levels = protein_levels(bio, prof) * prot_mult[None, :]
    size = np.sqrt(lib / median[atom_sub]) * np.exp(rng.normal(0.0, 0.25, n_atoms))
    mu_atoms = size[:, None] * levels[atom_sub]
    mu = sel @ mu_atoms
    specific = rng.poisson(rng.gamma(_PROTEIN_THETA, mu / _PROTEIN_THETA))
    amb = ambient_levels() * amb_mult
    amb_cell = np.exp(rng.normal(0.0, 0.2, n_cells))[:, None] * amb[None, :]
    adt = (specific + rng.poisson(amb_cell)).astype(np.int32)
    amb_empty = 0.4 * np.exp(rng.normal(0.0, 0.3, n_empty))[:, None] * amb[None, :]
    empty_adt = rng.poisson(amb_empty).astype(np.int32)

    # Barcodes: cells and empty droplets interleaved in one sorted list.
    codes = _barcodes(rng, n_cells + n_empty)
    is_cell = np.zeros(codes.size, bool)
    is_cell[rng.choice(codes.size, size=n_cells, replace=False)] = True
    barcodes, empty_barcodes = codes[is_cell], codes[~is_cell]

    sub = [SUBSETS[i] for i in cell_sub]
    truth = pd.DataFrame(
        {
            "cell_id": [f"{spec.sample_id}:{b.decode()}" for b in barcodes],
            "sample_id": spec.sample_id,
            "l1": [s.l1 for s in sub],
            "l2": [s.l2 for s in sub],
            "subset": [s.name for s in sub],
            "doublet": doublet,
            "low_quality": low_quality,
            "contaminant": contaminant.astype(str),
        }
    )
    composition = pd.DataFrame({"subset": names, "expected_share": expected, "donor_share": share})
    return SampleCounts(
        barcodes, rna, adt, truth, empty_barcodes, empty_rna, empty_adt, composition
    )
