"""Samples stacked into one cohort matrix per modality: same features, rows appended.

`stack_rows` appends CSR blocks without densifying (int32 indices while they fit);
`gene_list_mismatches` / `check_same_genes` say which sample's features differ and how.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.cohort import raise_all
from sccohort.errors import InputError

_INT32_MAX = np.iinfo(np.int32).max


def check_same_genes(
    first: str, reference: pd.Index, sample: str, names: pd.Index, file: Any = None
) -> None:
    """Raise `InputError` when sample ``sample``'s genes are not those of sample ``first``."""
    ref_set = set(reference)
    if set(names) == ref_set:
        return
    only_here = [g for g in names if g not in ref_set][:5]
    here = set(names)
    only_ref = [g for g in reference if g not in here][:5]
    raise InputError(
        f"its genes differ from sample '{first}' (only in '{sample}': "
        f"{', '.join(only_here) or 'none'}; only in '{first}': "
        f"{', '.join(only_ref) or 'none'})",
        file=file,
        sample=sample,
        hint=(
            "Quantify every sample against the same reference transcriptome "
            "(same Cell Ranger reference and version)"
        ),
    )


def gene_list_mismatches(
    genes: Mapping[str, Sequence[str]], files: Mapping[str, Any] | None = None
) -> list[InputError]:
    """One problem per sample whose genes are not the majority's.

    The gene list held by most samples is the reference (on a tie, the one of the first
    such sample in order), so the message names the odd sample out, not a good one.

    Parameters
    ----------
    genes
        ``sample_id -> gene names`` in sheet order.
    files
        ``sample_id -> count file``, for the messages.

    Returns
    -------
    The problems, in sheet order (empty when every sample has the same genes).
    """
    sets = {s: frozenset(g) for s, g in genes.items()}
    if len(set(sets.values())) <= 1:
        return []
    reference = Counter(sets.values()).most_common(1)[0][0]
    holders = [s for s, g in sets.items() if g == reference]
    named = ", ".join(f"'{s}'" for s in holders[:3]) + (", ..." if len(holders) > 3 else "")
    problems = []
    for sample, here in sets.items():
        if here == reference:
            continue
        only_here = [g for g in genes[sample] if g not in reference][:5]
        missing = [g for g in genes[holders[0]] if g not in here][:5]
        problems.append(
            InputError(
                f"its genes differ from those of {len(holders)} other sample(s) ({named}): "
                f"only here {', '.join(only_here) or 'none'}; missing here "
                f"{', '.join(missing) or 'none'}",
                file=None if files is None else files.get(sample),
                sample=sample,
                hint="Quantify every sample against the same reference transcriptome "
                "(same Cell Ranger reference and version)",
            )
        )
    return problems


def _concat_rna(results: dict[str, dict[str, ad.AnnData]], paths: pd.Series) -> ad.AnnData:
    samples = list(results)
    genes = {s: list(results[s]["rna"].var_names) for s in samples}
    raise_all(gene_list_mismatches(genes, paths.to_dict()), "the samples' genes")
    reference = results[samples[0]]["rna"].var_names
    return stack_rows([results[s].pop("rna") for s in samples], reference)


def _concat_prot(results: dict[str, dict[str, ad.AnnData]]) -> ad.AnnData:
    samples = list(results)
    reference = results[samples[0]]["prot"].var_names
    common = reference
    for sample in samples:
        common = common[common.isin(results[sample]["prot"].var_names)]
    if len(common) == 0:
        raise InputError(
            "the samples share no antibody",
            sample=samples[0],
            hint="Name the antibodies the same way in every sample",
        )
    dropped = {
        s: [p for p in results[s]["prot"].var_names if p not in set(common)] for s in samples
    }
    dropped = {s: d for s, d in dropped.items() if d}
    if dropped:
        detail = "; ".join(f"'{s}': {', '.join(d)}" for s, d in dropped.items())
        warnings.warn(
            f"antibody panels differ between samples; kept the {len(common)} antibodies "
            f"common to all and dropped {detail}",
            stacklevel=3,
        )
    return stack_rows([results[s].pop("prot") for s in samples], common)


def _row_slots(adata: ad.AnnData) -> dict[str | None, Any]:
    """``X`` (key None) and every layer of ``adata`` that is not None."""
    slots: dict[str | None, Any] = {None: adata.X} if adata.X is not None else {}
    return slots | dict(adata.layers)


def stack_rows(parts: list[ad.AnnData], var_names: pd.Index) -> ad.AnnData:
    """Stack AnnData objects by rows on the columns ``var_names``; ``parts`` is emptied.

    The result equals ``ad.concat([p[:, var_names] for p in parts], join="inner",
    merge="first")`` for ``X`` and layers that are sparse (returned as CSR) or dense, but its
    arrays are allocated once and each part is released as soon as it is copied: the peak is
    the result plus one part, where ``ad.concat`` holds every part and the result.

    Parameters
    ----------
    parts
        AnnData objects holding every name of ``var_names`` and the same ``X``/layers keys
        (``X`` None in all or in none).
    var_names
        Columns of the result, in order.

    Returns
    -------
    AnnData ``sum(n_obs) x len(var_names)``: ``obs`` the parts' ``obs`` stacked (columns
    common to all), ``var`` the first part's rows for ``var_names``.
    """
    columns = [p.var_names.get_indexer(var_names) for p in parts]
    # parts whose columns are already ``var_names`` in order are copied without subsetting
    whole = [
        c.size == p.n_vars and np.array_equal(c, np.arange(c.size))
        for p, c in zip(parts, columns, strict=True)
    ]
    var = parts[0].var.iloc[columns[0]].copy()
    first = _row_slots(parts[0])
    sizes = {}
    for key, value in first.items():
        if sp.issparse(value):
            sizes[key] = sum(
                _row_slots(p)[key].nnz if w else sp.csr_matrix(_row_slots(p)[key])[:, c].nnz
                for p, c, w in zip(parts, columns, whole, strict=True)
            )
    n_obs = sum(p.n_obs for p in parts)
    n_vars = len(var_names)
    out: dict[str | None, Any] = {}
    for key, value in first.items():
        if key in sizes:
            index_dtype = np.int32 if max(sizes[key], n_vars) <= _INT32_MAX else np.int64
            out[key] = (
                np.empty(sizes[key], dtype=value.dtype),
                np.empty(sizes[key], dtype=index_dtype),
                np.zeros(n_obs + 1, dtype=index_dtype),
            )
        else:
            out[key] = np.empty((n_obs, n_vars), dtype=np.asarray(value).dtype)
    obs = []
    row = 0
    offsets = dict.fromkeys(sizes, 0)
    for i in range(len(parts)):
        part, cols, full = parts[i], columns[i], whole[i]
        parts[i] = None  # type: ignore[call-overload]  # release the part once copied
        stop = row + part.n_obs
        slots = _row_slots(part)
        if not part.is_view:
            # take the matrices out of the part: AnnData objects hold reference cycles, so a
            # matrix left inside would live until the next garbage collection
            part.X = None
            for key in list(part.layers):
                del part.layers[key]
        for key, value in slots.items():
            if key in sizes:
                mat = sp.csr_matrix(value) if full else sp.csr_matrix(value)[:, cols]
                if not mat.has_canonical_format:
                    mat = mat.copy()
                    mat.sum_duplicates()
                data, indices, indptr = out[key]
                lo, hi = offsets[key], offsets[key] + mat.nnz
                data[lo:hi] = mat.data
                indices[lo:hi] = mat.indices
                indptr[row + 1 : stop + 1] = mat.indptr[1:] + lo
                offsets[key] = hi
            else:
                value = value.toarray() if sp.issparse(value) else np.asarray(value)
                out[key][row:stop] = value if full else value[:, cols]
        obs.append(part.obs)
        row = stop
        part = slots = value = mat = None
    matrices = {
        key: sp.csr_matrix(arrays, shape=(n_obs, n_vars)) if key in sizes else arrays
        for key, arrays in out.items()
    }
    frame = pd.concat(obs, join="inner")
    for column in frame.columns:  # categorical in every part: categorical, as ad.concat
        if all(isinstance(o[column].dtype, pd.CategoricalDtype) for o in obs):
            joined = pd.api.types.union_categoricals([o[column] for o in obs])
            frame[column] = pd.Categorical(frame[column], categories=joined.categories)
    result = ad.AnnData(X=matrices.pop(None, None), obs=frame, var=var)
    for key, matrix in matrices.items():
        result.layers[key] = matrix
    return result


def _concat_hto(results: dict[str, dict[str, ad.AnnData]]) -> ad.AnnData | None:
    lacking = [s for s, mods in results.items() if "hto" not in mods]
    if len(lacking) == len(results):
        return None
    if lacking:
        warnings.warn(
            f"samples {', '.join(lacking)} have no hashtags (HTO); the hto modality is left out",
            stacklevel=3,
        )
        return None
    parts = [mods["hto"] for mods in results.values()]
    joined = ad.concat(parts, join="outer", merge="first", fill_value=0)
    for key in ("counts",):
        joined.layers[key] = sp.csr_matrix(joined.layers[key], dtype=np.int32)
    joined.X = sp.csr_matrix(joined.X, dtype=np.float32)
    return joined
