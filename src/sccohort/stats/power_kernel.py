"""The default test's permuted moderated t for many simulated cohorts at once (numba).

For a binary term and the intercept (no covariates, no blocks) with precision weights, a
relabelling's statistics are ratios of two weighted sums per subset (the case donors' summed
weights ``s1`` and weighted residuals ``t1``, matrix products done by BLAS beforehand); the
moderation (limma's ``fitFDist`` / ``squeezeVar`` within each cohort) and the squared t
follow here, fused in one pass per relabelling and cohort, which is what the power grid
spends its time on. The algebra is `sccohort.stats.permutation._weighted_model`'s
(``term_only``) with its ``_squeeze``; `tests/test_power.py` checks the p-values against
`compare_abundance` itself.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from sccohort.stats.special_functions import digamma, trigamma_inverse_scalar


@numba.njit(cache=True, nogil=True)
def squared_t(
    s1: np.ndarray,
    t1: np.ndarray,
    sw: np.ndarray,
    rss: np.ndarray,
    df: float,
    n_sub: int,
    digamma_half: float,
    trigamma_half: float,
    out: np.ndarray,
) -> None:
    """Squared moderated t (B x P*K, into ``out``) from the relabellings' weighted sums.

    ``s1``, ``t1`` (B x P*K): per relabelling and column the cases' summed weights and
    weighted residuals; ``sw``, ``rss`` (P*K): every donor's summed weights and weighted
    residual sum of squares; ``df`` the residual df; ``n_sub`` = K columns per cohort;
    ``digamma_half``, ``trigamma_half``: digamma and trigamma of ``df / 2``.
    """
    n_rows, n_cols = s1.shape
    panels = n_cols // n_sub
    half = df / 2
    offset = math.log(half) - digamma_half
    inv_sw = 1.0 / sw
    floor = 1e-12 * rss
    fitted = np.empty(n_sub)  # the term's sum of squares: t1^2 / gram
    s2 = np.empty(n_sub)
    log_s2 = np.empty(n_sub)
    for b in range(n_rows):
        for p in range(panels):
            base = p * n_sub
            e_sum = 0.0
            s2_sum = 0.0
            for k in range(n_sub):
                c = base + k
                gram = s1[b, c] - s1[b, c] * s1[b, c] * inv_sw[c]
                q = t1[b, c] * t1[b, c] / gram
                v = max(rss[c] - q, floor[c]) / df
                fitted[k] = q
                s2[k] = v
                log_s2[k] = math.log(v)
                e_sum += log_s2[k]
                s2_sum += v
            if n_sub < 3:  # no squeeze: t^2 = coef^2 gram / s2 = fitted / s2
                for k in range(n_sub):
                    out[b, base + k] = fitted[k] / s2[k]
                continue
            e_mean = e_sum / n_sub + offset
            e_ss = 0.0
            for k in range(n_sub):
                d = log_s2[k] + offset - e_mean
                e_ss += d * d
            e_var = e_ss / (n_sub - 1) - trigamma_half
            if e_var > 0:
                d0 = 2.0 * trigamma_inverse_scalar(e_var)
                s0 = math.exp(e_mean + digamma(d0 / 2) - math.log(d0 / 2))
                for k in range(n_sub):
                    out[b, base + k] = fitted[k] * (d0 + df) / (d0 * s0 + df * s2[k])
            else:
                pooled = s2_sum / n_sub
                for k in range(n_sub):
                    out[b, base + k] = fitted[k] / pooled
