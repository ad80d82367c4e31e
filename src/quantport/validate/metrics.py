"""Logit-comparison metrics, computed window by window without keeping all logits.

As in llama.cpp's ``perplexity`` tool (``--kl-divergence``), only the second half of each
window is scored, so every scored token has at least ``ctx/2`` tokens of context.

Log-probabilities are computed once per model and window (:func:`log_softmax`) and shared by
every comparison that window takes part in. They are float32 (torch, all cores): the error of a
float32 log-softmax is ~1e-7 relative, far below the smallest figure any check reads (1e-4
nats), and per-token sums are accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LogitStats", "log_softmax"]


def log_softmax(logits: Any) -> Any:
    """Row-wise log-softmax of ``[n, vocab]`` logits (numpy or torch) as a float32 tensor."""
    import torch

    x = torch.as_tensor(logits)
    if x.dtype != torch.float32:
        x = x.float()
    return torch.log_softmax(x, dim=-1)


@dataclass
class LogitStats:
    """Running sums for PPL of both models, KL(reference || artifact), top-1 agreement.

    :meth:`add` takes the log-probabilities of the scored positions only (rows that each predict
    the following token) and the tokens they predict.
    """

    nll_art: float = 0.0
    nll_ref: float = 0.0
    kld_sum: float = 0.0
    kld_max: float = 0.0
    same_top1: int = 0
    n: int = 0
    max_abs: float = 0.0
    kld_values: list[np.ndarray] = field(default_factory=list)

    def add(self, lp_ref: Any, lp_art: Any, target: np.ndarray,
            ref_logits: Any = None, art_logits: Any = None,
            top_ref: Any = None, top_art: Any = None) -> None:
        """Add one window: ``lp_*`` are ``[n, vocab]`` log-probabilities (from
        :func:`log_softmax`), ``target[i]`` the token that row ``i`` predicts; the raw logits,
        when given, feed the largest absolute logit difference; ``top_*`` are each row's
        argmax where the caller already has them (a model's log-probabilities often take part
        in two comparisons)."""
        import torch

        tgt = torch.as_tensor(np.asarray(target, dtype=np.int64))
        idx = torch.arange(len(tgt))
        self.nll_ref -= float(lp_ref[idx, tgt].double().sum())
        self.nll_art -= float(lp_art[idx, tgt].double().sum())
        kld = (lp_ref.exp() * (lp_ref - lp_art)).sum(-1).double()
        self.kld_sum += float(kld.sum())
        self.kld_max = max(self.kld_max, float(kld.max()))
        self.kld_values.append(kld.numpy())
        if top_ref is None:
            top_ref = lp_ref.argmax(-1)
        if top_art is None:
            top_art = lp_art.argmax(-1)
        self.same_top1 += int((top_ref == top_art).sum())
        self.n += len(tgt)
        if ref_logits is not None and art_logits is not None:
            diff = (torch.as_tensor(ref_logits) - torch.as_tensor(art_logits)).abs().max()
            self.max_abs = max(self.max_abs, float(diff))

    def summary(self) -> dict[str, float]:
        """The metrics: ppl, ppl_reference, kld_mean, kld_p99, top1_agreement, max diff."""
        n = max(self.n, 1)
        kld = np.concatenate(self.kld_values) if self.kld_values else np.zeros(1)
        return {
            "ppl": float(np.exp(self.nll_art / n)),
            "ppl_reference": float(np.exp(self.nll_ref / n)),
            "kld_mean": self.kld_sum / n,
            "kld_p99": float(np.percentile(kld, 99)),
            "kld_max": self.kld_max,
            "top1_agreement": self.same_top1 / n,
            "max_abs_logit_diff": self.max_abs,
            "n_tokens_scored": self.n,
        }
