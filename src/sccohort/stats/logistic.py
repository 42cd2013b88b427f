"""L2-penalised logistic regression for nested leave-one-out, many fits in one compiled kernel.

`_nested_loo` fits every outer fold x every candidate ``C`` (x a block of label permutations)
with one numba Newton kernel (`_newton`, solved through `_fit_batch`) and chooses ``C`` per
fold by the approximate leave-one-out log-loss (`_alo_logloss`). Three exact shortcuts keep
each fit small: a held-out fold is solved in an orthonormal basis of its training donors'
rows (at most ``n - 2`` unknowns besides the intercept, whatever the number of features),
starts from a one-step leave-one-out update of the fit on all donors, and reuses its
Hessian's factorisation once close to the solution (chord steps). Every fit converges to
the same optimum as a plain solver, to rounding error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from scipy.special import expit, log_expit

#: Newton's method stops at a step below this norm, before one last step (:func:`_fit_batch`).
_NEWTON_TOL = 1e-8


#: After a step below this norm, the next steps reuse the last Hessian's factorisation.
_CHORD_FROM = 0.1


@numba.njit(cache=True, nogil=True)
def _cholesky(h: np.ndarray) -> None:
    """Lower Cholesky factor of the symmetric positive definite ``h`` (q, q), in place.

    Only the lower triangle is read. A pivot that rounding leaves at or below zero (a
    numerically singular Hessian) is floored at a tiny positive value.
    """
    q = h.shape[0]
    for j in range(q):
        s = h[j, j]
        for m in range(j):
            s -= h[j, m] * h[j, m]
        d = np.sqrt(max(s, 1e-300))
        h[j, j] = d
        for i in range(j + 1, q):
            t = h[i, j]
            for m in range(j):
                t -= h[i, m] * h[j, m]
            h[i, j] = t / d


@numba.njit(cache=True, nogil=True)
def _forward(lower: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = L^-1 b`` for the lower-triangular ``L`` (q, q) and ``b`` (q,)."""
    for a in range(lower.shape[0]):
        t = b[a]
        for m in range(a):
            t -= lower[a, m] * out[m]
        out[a] = t / lower[a, a]


# long: numba kernel, one compiled loop nest; helpers would be calls per fold
@numba.njit(cache=True, nogil=True)
def _newton(x1, w, y, lam, theta, lev, tol, chord_from, max_iter):  # pragma: no cover  # noqa: C901, PLR0912 - numba kernel: one compiled loop nest, helpers would be calls per fold
    """Kernel of :func:`_fit_batch`: updates ``theta`` (F, K, q) and fills ``lev`` (F, K, n)."""
    n_fold, n, q = x1.shape
    hess = np.empty((q, q))  # Cholesky factor of the last Hessian formed
    grad = np.empty(q)
    step = np.empty(q)
    tmp = np.empty(q)
    mu = np.empty(n)
    curv = np.empty(n)
    for f in range(n_fold):
        x = x1[f]
        for k in range(y.shape[0]):
            th = theta[f, k]
            done = False
            last = np.inf  # norm of the previous step
            slow = True  # the previous step was not a fast-contracting chord step
            for it in range(max_iter + 1):
                final = done or it == max_iter
                # a new Hessian while far from the solution, for the last step and when
                # reusing the old one stopped contracting the steps tenfold
                fresh = final or last >= chord_from or slow
                for i in range(n):
                    eta = 0.0
                    for j in range(q):
                        eta += x[i, j] * th[j]
                    if eta >= 0.0:
                        m = 1.0 / (1.0 + np.exp(-eta))
                    else:
                        e = np.exp(eta)
                        m = e / (1.0 + e)
                    mu[i] = m
                    curv[i] = w[f, i] * m * (1.0 - m)
                grad[0] = 0.0
                for j in range(1, q):
                    grad[j] = lam[k] * th[j]
                for i in range(n):
                    r = w[f, i] * (mu[i] - y[k, i])
                    for a in range(q):
                        grad[a] += r * x[i, a]
                if fresh:
                    for a in range(q):
                        for c in range(a + 1):
                            hess[a, c] = 0.0
                    for i in range(n):
                        v = curv[i]
                        for a in range(q):
                            va = v * x[i, a]
                            for c in range(a + 1):
                                hess[a, c] += va * x[i, c]
                    for a in range(1, q):
                        hess[a, a] += lam[k]
                    _cholesky(hess)
                _forward(hess, grad, tmp)
                for a in range(q - 1, -1, -1):  # back substitution with L'
                    t = tmp[a]
                    for m in range(a + 1, q):
                        t -= hess[m, a] * step[m]
                    step[a] = t / hess[a, a]
                if final:
                    for j in range(q):
                        th[j] -= step[j]
                    for i in range(n):
                        _forward(hess, x[i], tmp)
                        t = 0.0
                        for j in range(q):
                            t += tmp[j] * tmp[j]
                        lev[f, k, i] = t
                    break
                # damped: no linear predictor moves by more than 5 in one step
                move = 0.0
                for i in range(n):
                    t = 0.0
                    for j in range(q):
                        t += x[i, j] * step[j]
                    move = max(move, abs(t))
                scale = min(1.0, 5.0 / max(move, 1e-300))
                norm2 = 0.0
                for j in range(q):
                    t = step[j] * scale
                    th[j] -= t
                    norm2 += t * t
                norm = np.sqrt(norm2)
                slow = not fresh and norm > 0.1 * last
                last = norm
                done = norm < tol


def _fit_batch(
    x1: np.ndarray,
    w: np.ndarray,
    y: np.ndarray,
    lam: np.ndarray,
    theta: np.ndarray | None = None,
    *,
    max_iter: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Penalised logistic fits of many problems at once (damped Newton's method).

    ``x1`` (F, n, q): design per fold, first column the intercept; ``w`` (F, n) 0/1 donor
    weights; ``y`` (K, n) labels and ``lam`` (K,) penalties ``1 / C`` (on every coefficient
    but the intercept) of the K problems solved in every fold; ``theta`` (F, K, q) the
    starting point (default 0). Minimises ``sum_i w_i logloss_i + lam / 2 * |beta|^2``.

    Each problem takes Newton steps (Cholesky solves; damped so that no linear predictor
    moves by more than 5). Once a step is below :data:`_CHORD_FROM`, the next steps reuse
    the last Hessian's factorisation (chord steps: no new Hessian, linear convergence)
    for as long as each shrinks the step at least tenfold, else a new Hessian is formed.
    At a step below :data:`_NEWTON_TOL` (Euclidean norm), one last, undamped Newton step
    with a new Hessian ``H`` lands at the solution to rounding error, and ``H`` gives the
    leverages ``x_i' H^-1 x_i`` of the approximate leave-one-out (relative error about
    1e-9 from the distance to the solution where ``H`` is taken).
    Returns ``theta`` (F, K, q) and the leverages (F, K, n).
    """
    n_fold, n, q = x1.shape
    if theta is None:
        theta = np.zeros((n_fold, len(lam), q))
    theta = np.array(theta, dtype=np.float64, order="C")
    lev = np.empty((n_fold, len(lam), n))
    _newton(
        np.ascontiguousarray(x1, dtype=np.float64),
        np.ascontiguousarray(w, dtype=np.float64),
        np.ascontiguousarray(y, dtype=np.float64),
        np.ascontiguousarray(lam, dtype=np.float64),
        theta,
        lev,
        _NEWTON_TOL,
        _CHORD_FROM,
        max_iter,
    )
    return theta, lev


def _alo_logloss(
    x1: np.ndarray, w: np.ndarray, y: np.ndarray, theta: np.ndarray, lev: np.ndarray
) -> np.ndarray:
    """Approximate leave-one-out log-loss over each fold's training donors, (F, K).

    Removing donor i moves its linear predictor to ``eta_i + h_i / (1 - v_i h_i) *
    (mu_i - y_i)`` with the leverage ``h_i = x_i' H^-1 x_i`` (``lev``, (F, K, n)) and
    ``v_i = mu_i (1 - mu_i)``.
    """
    eta = theta @ np.swapaxes(x1, 1, 2)  # (F, K, n)
    mu = expit(eta)
    eta_loo = eta + lev / np.maximum(1.0 - mu * (1.0 - mu) * lev, 1e-12) * (mu - y[None])
    loss = -(y[None] * log_expit(eta_loo) + (1.0 - y[None]) * log_expit(-eta_loo))
    return (loss * w[:, None, :]).sum(axis=-1)


def _standardise(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per fold: standardise ``x`` (n, p) with the mean / SD of the donors with ``w`` = 1.

    Returns the standardised features (F, n, p) and each fold's mean and SD (F, 1, p).
    """
    n_train = w.sum(axis=1, keepdims=True)[..., None]  # (F, 1, 1)
    mean = (w[..., None] * x[None]).sum(axis=1, keepdims=True) / n_train
    var = (w[..., None] * (x[None] - mean) ** 2).sum(axis=1, keepdims=True) / n_train
    sd = np.sqrt(var)
    sd[sd < 1e-12] = 1.0
    return (x[None] - mean) / sd, mean, sd


@dataclass
class _Folds:
    """Leave-one-out folds of one nested run, in the coordinates the solver works in.

    The held-out folds (f < n, donor f left out) and the fold of all donors are kept apart.
    The penalised coefficients of a fold's fit lie in the span of its training donors'
    standardised rows (the gradient and the Hessian never leave it), which has at most
    ``n_train - 1`` dimensions since those rows are centred. With more features than that,
    a fold is solved in an orthonormal basis of the span (``basis`` (F, p, d)): the ridge
    penalty is unchanged by the rotation and Newton's method takes the same steps, in
    ``d + 1`` instead of ``p + 1`` unknowns.
    """

    x1: np.ndarray  # (F, n, d + 1): intercept column, then the (rotated) features
    w: np.ndarray  # (F, n) 0/1 training weights
    mean: np.ndarray  # (F, 1, p) training mean and SD of the raw features
    sd: np.ndarray
    basis: np.ndarray | None  # (F, p, d), None when the features are not rotated

    @classmethod
    def build(cls, x: np.ndarray, w: np.ndarray) -> _Folds:
        """Folds of the donors x features ``x`` (n, p) with training weights ``w`` (F, n)."""
        xs, mean, sd = _standardise(x, w)
        d = int(w.sum(axis=1).max()) - 1
        basis = None
        if x.shape[1] > d:
            vt = np.linalg.svd(xs * w[..., None], full_matrices=False)[2]
            basis = np.swapaxes(vt[:, :d], 1, 2)
            xs = xs @ basis
        return cls(np.concatenate([np.ones((*xs.shape[:2], 1)), xs], axis=2), w, mean, sd, basis)

    def raw(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fits ``theta`` (F, K, d + 1) as intercept (F, K) and slopes per raw unit (F, K, p).

        The intercept applies to uncentred features: ``eta = b0 + x' beta``.
        """
        beta = (
            theta[..., 1:] if self.basis is None else theta[..., 1:] @ np.swapaxes(self.basis, 1, 2)
        )
        beta = beta / self.sd
        return theta[..., 0] - (beta @ np.swapaxes(self.mean, 1, 2))[..., 0], beta

    def from_raw(self, b0: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`raw`: (F, K) and (F, K, p) -> ``theta`` (F, K, d + 1)."""
        b0 = b0 + (beta @ np.swapaxes(self.mean, 1, 2))[..., 0]
        beta = beta * self.sd
        if self.basis is not None:
            beta = beta @ self.basis  # the slopes' part outside the span does not matter
        return np.concatenate([b0[..., None], beta], axis=2)


def _loo_step(x1: np.ndarray, theta: np.ndarray, y: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Each donor's leave-one-out fit, one Newton step from the fit on all donors.

    ``x1`` (n, q) design, ``theta`` (K, q) fits of labels ``y`` (K, n) with penalties
    ``lam`` (K,). Without donor i the fit moves by ``H^-1 x_i (mu_i - y_i) / (1 - v_i h_i)``
    (Sherman-Morrison, as in :func:`_alo_logloss`). Returns the moved fits (n, K, q).
    """
    n, q = x1.shape
    mu = expit(theta @ x1.T)  # (K, n)
    v = mu * (1.0 - mu)
    hess = (v[:, None, :] * x1.T) @ x1  # (K, q, q)
    hess[:, np.arange(1, q), np.arange(1, q)] += lam[:, None]
    solved = np.linalg.solve(hess, np.broadcast_to(x1.T, (len(lam), q, n)))  # H^-1 x_i
    lev = (solved * x1.T).sum(axis=1)
    shift = solved * ((mu - y) / np.maximum(1.0 - v * lev, 1e-12))[:, None, :]
    return theta[None] + np.moveaxis(shift, 2, 0)


def _nested_loo(
    held: _Folds, full: _Folds, y: np.ndarray, lam: np.ndarray, *, c_full: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Nested leave-one-out for R label vectors ``y`` (R, n) at once.

    The fit on all donors comes first; one Newton step from it (:func:`_loo_step`),
    re-expressed in each held-out fold's scaling, starts that fold's Newton iterations.
    Returns the out-of-fold scores (R, n) and probabilities (R, n), the index of the C
    chosen in each fold (R, n) and, when ``c_full``, on all donors (R,) (else None).
    """
    n_lab, n = y.shape
    n_c = len(lam)
    # problem k = (label vector k // n_c, penalty k % n_c)
    labels, lams = np.repeat(y, n_c, axis=0), np.tile(lam, n_lab)
    theta_all, lev_all = _fit_batch(full.x1, full.w, labels, lams)
    start = held.from_raw(*full.raw(_loo_step(full.x1[0], theta_all[0], labels, lams)))
    theta, lev = _fit_batch(held.x1, held.w, labels, lams, start)
    crit = _alo_logloss(held.x1, held.w, labels, theta, lev)
    best = crit.reshape(n, n_lab, n_c).argmin(axis=2)  # (n, R); ties: strongest penalty
    theta = theta.reshape(n, n_lab, n_c, theta.shape[-1])
    chosen = np.take_along_axis(theta, best[:, :, None, None], axis=2)[:, :, 0]  # (n, R, r)
    f_idx = np.arange(n)
    score = np.einsum("frq,fq->rf", chosen[:, :, 1:], held.x1[f_idx, f_idx, 1:])
    prob = expit(score + chosen[:, :, 0].T)
    best_full = None
    if c_full:
        crit = _alo_logloss(full.x1, full.w, labels, theta_all, lev_all)
        best_full = crit.reshape(n_lab, n_c).argmin(axis=1)
    return score, prob, best.T, best_full
