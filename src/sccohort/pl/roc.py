"""Donor-level prediction: ROC curve from cross-validated per-donor scores."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from ..errors import InputError
from ._common import FONT, category_colours, new_figure, require_columns


def roc(
    predictions: pd.DataFrame,
    *,
    truth: str = "truth",
    score: str = "score",
    model: str | None = "model",
    case: str | int | bool | None = None,
    title: str | None = None,
) -> Figure:
    """ROC curve(s) of per-donor predictions, with AUC and the number of donors per class.

    Parameters
    ----------
    predictions
        One row per donor (and model): ``truth`` (1/0, True/False or ``"case"``/
        ``"control"``), ``score`` (higher = more likely a case, e.g. out-of-fold
        probability) and optionally a ``model`` column (one curve per model).
    truth, score, model
        Column names; ``model=None`` or a missing column draws one curve.
    case
        The value of ``truth`` that marks a case (default: 1 / True / ``"case"``).
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The legend gives each model's AUC.

    Examples
    --------
    >>> from sccohort import pl
    >>> predictions = pd.DataFrame({"truth": [1, 1, 1, 0, 0, 0]})
    >>> predictions["score"] = [0.9, 0.7, 0.4, 0.5, 0.2, 0.1]
    >>> type(pl.roc(predictions)).__name__
    'Figure'
    """
    require_columns(predictions, (truth, score), "the prediction table")
    data = predictions.dropna(subset=[truth, score])
    values = data[truth]
    if case is None:
        present = set(values.unique())
        case = "case" if "case" in present else True if values.dtype == bool else 1
    y = (values == case).to_numpy()
    if y.all() or not y.any():
        raise InputError(
            "the prediction table needs both cases and controls",
            column=truth,
            hint=f"truth values found: {', '.join(map(str, sorted(map(str, values.unique()))))}; "
            f"cases are marked by {case!r}",
        )
    groups = (
        [(str(m), part) for m, part in data.groupby(model, sort=False)]
        if model is not None and model in data
        else [("", data)]
    )
    colours = category_colours([g for g, _ in groups])
    fig = new_figure(5.6, 5.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=0.8, label="chance (AUC 0.50)")
    for name, part in groups:
        yy = (part[truth] == case).to_numpy()
        ss = part[score].to_numpy(dtype=float)
        if yy.all() or not yy.any():
            raise InputError(
                f"model '{name}' has only one class of donors", column=truth, key=model
            )
        fpr, tpr, _ = roc_curve(yy, ss)
        auc = roc_auc_score(yy, ss)
        text = f"{name + ': ' if name else ''}AUC {auc:.2f}"
        ax.plot(fpr, tpr, lw=2, color=colours[name], label=text, drawstyle="default")
    first = (groups[0][1][truth] == case).to_numpy()  # donors of one model
    n_case, n_control = int(first.sum()), int((~first).sum())
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)", fontsize=FONT["label"])
    ax.set_ylabel("true positive rate (sensitivity)", fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    ax.legend(loc="lower right", fontsize=FONT["small"], frameon=False)
    counts = f"{n_case} cases, {n_control} controls"
    ax.set_title(
        f"{title}\n({counts})" if title else f"Donor-level prediction ({counts})",
        fontsize=FONT["title"],
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig
