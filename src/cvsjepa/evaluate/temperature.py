"""Temperature scaling per criterion, fitted on **val** only.

For criterion c with raw probability ``p`` (the sigmoid of the model's logit ``z``)::

    p'_c = sigmoid(z / T_c) = sigmoid(logit(p) / T_c)

``T_c > 0`` is chosen to minimise the negative log-likelihood of the val labels (the majority of
the raters, as every metric uses)::

    NLL(T) = -mean_i [ y_i log p'_i + (1 - y_i) log(1 - p'_i) ]

T > 1 softens over-confident probabilities, T < 1 sharpens timid ones. The map is strictly
increasing, so it never changes a ranking: AP, mAP and every per-criterion decision at a mapped
threshold stay exactly the same; only the probabilities people read (and Brier, ECE, and the
product score of full CVS) change. One parameter per criterion cannot overfit a val split of a few
hundred keyframes the way a binned or isotonic map could.

The fit optimises ``s = log(1/T)`` with L-BFGS (float64, strong-Wolfe line search); NLL is convex
in ``1/T``, so there is a single minimum. ``T`` is kept within ``[T_MIN, T_MAX]``: an uninformative
criterion drives ``T`` towards infinity (every probability to 0.5) and stops at the bound. A
criterion whose val labels are all one class is not fitted (``T = 1``) and says so.

:class:`Temperature` is what ``evaluate`` writes to ``calibration.json``
(:data:`cvsjepa.rundir.CALIBRATION_FILE`) and what ``predict`` and :class:`cvsjepa.CVSModel` apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

METHOD = "temperature"
FORMULA = "p' = sigmoid(logit(p) / T), one T per criterion, fitted on val by minimising the NLL"
T_MIN, T_MAX = 0.01, 100.0
_EPS = 1e-7  # probabilities are clamped to [eps, 1 - eps] before the logit (a stored 0 or 1 stays finite)


def _logit(p) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(p, dtype=np.float64)).clamp(_EPS, 1 - _EPS)
    return torch.log(p) - torch.log1p(-p)


def nll(probs, labels) -> float:
    """Mean binary negative log-likelihood of probabilities ``[N]`` against 0/1 labels ``[N]``."""
    z = _logit(probs)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64)).round()
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, y)) if len(z) else math.nan


def fit_one(probs, labels) -> tuple[float, str | None]:
    """``(T, reason)`` for one criterion; ``reason`` is set (and T = 1) when val cannot fit it."""
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64)).round()
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return 1.0, f"not fitted: val has {'no positive' if n_pos == 0 else 'no negative'} keyframe (T = 1)"
    z = _logit(probs)
    s = torch.zeros((), dtype=torch.float64, requires_grad=True)  # s = log(1/T); start at T = 1
    opt = torch.optim.LBFGS([s], lr=1.0, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z * torch.exp(s), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(torch.exp(-s.detach()))
    if not math.isfinite(t):
        t = T_MAX
    return min(max(t, T_MIN), T_MAX), None


@dataclass(frozen=True)
class Temperature:
    """One temperature per criterion; ``apply`` maps raw probabilities to calibrated ones."""

    criteria: tuple[str, ...]
    temperature: tuple[float, ...]
    notes: tuple[str | None, ...] = ()  # per criterion: why it was not fitted (None when it was)
    fit: dict = field(default_factory=dict)  # what the fit saw: split, n, val NLL before/after

    @classmethod
    def identity(cls, criteria: tuple[str, ...]) -> "Temperature":
        return cls(tuple(criteria), tuple(1.0 for _ in criteria), tuple(None for _ in criteria))

    @classmethod
    def fit_val(cls, probs, labels, criteria: tuple[str, ...], val_split: str = "") -> "Temperature":
        """Fit on val ``probs, labels [N, C]``. Never pass another split's labels here."""
        probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(criteria))
        labels = np.asarray(labels, dtype=np.float64).reshape(-1, len(criteria))
        ts, notes = zip(*(fit_one(probs[:, c], labels[:, c]) for c in range(len(criteria))))
        out = cls(tuple(criteria), tuple(ts), tuple(notes))
        after = out.apply(probs)
        fit = {"fitted_on": "val", "val_split": val_split, "n_val_samples": len(probs),
               "val_nll_before": [nll(probs[:, c], labels[:, c]) for c in range(len(criteria))],
               "val_nll_after": [nll(after[:, c], labels[:, c]) for c in range(len(criteria))]}
        return cls(out.criteria, out.temperature, out.notes, fit)

    @property
    def is_identity(self) -> bool:
        return all(t == 1.0 for t in self.temperature)

    def apply(self, probs):
        """Raw probabilities ``[..., C]`` (numpy or torch; or a scalar per criterion) -> calibrated,
        same type. float64 inside, so equal inputs give equal outputs wherever it is applied."""
        is_torch = isinstance(probs, torch.Tensor)
        arr = probs.detach().cpu().numpy() if is_torch else np.asarray(probs, dtype=np.float64)
        t = np.asarray(self.temperature, dtype=np.float64)
        out = torch.sigmoid(_logit(arr) / torch.as_tensor(t)).numpy()
        if is_torch:
            return torch.as_tensor(out, dtype=probs.dtype)
        return out

    def apply_one(self, p: float, c: int) -> float:
        """One probability of criterion ``c`` (a threshold, say) through the same map."""
        return float(torch.sigmoid(_logit([p]) / self.temperature[c])[0])

    def to_dict(self) -> dict:
        return {"method": METHOD, "formula": FORMULA, "criteria": list(self.criteria),
                "temperature": list(self.temperature), "notes": list(self.notes) if self.notes else None,
                "bounds": [T_MIN, T_MAX], **self.fit}

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Temperature":
        """Read what :meth:`to_dict` wrote; ValueError (the caller names the file) when malformed."""
        if not isinstance(d, dict) or d.get("method") != METHOD:
            raise ValueError(f"{where}: not a temperature calibration (method must be {METHOD!r})")
        crit, ts = d.get("criteria"), d.get("temperature")
        try:
            ts = tuple(float(t) for t in ts)
        except (TypeError, ValueError):
            ts = ()
        if not isinstance(crit, list) or len(ts) != len(crit) or not all(math.isfinite(t) and t > 0 for t in ts):
            raise ValueError(f"{where}: 'temperature' must hold one positive number per criterion, "
                             f"got {d.get('temperature')!r}")
        notes = tuple(d.get("notes") or [None] * len(ts))
        own = ("method", "formula", "criteria", "temperature", "notes", "bounds")
        fit = {k: v for k, v in d.items() if k not in own}
        return cls(tuple(crit), ts, notes, fit)
