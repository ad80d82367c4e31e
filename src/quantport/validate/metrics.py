"""Logit-comparison metrics, computed window by window without keeping all logits.

As in llama.cpp's ``perplexity`` tool (``--kl-divergence``), only the second half of each
window is scored, so every scored token has at least ``ctx/2`` tokens of context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LogitStats", "log_softmax"]


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (numerically stable)."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@dataclass
class LogitStats:
    """Running sums for PPL of both models, KL(reference || artifact), top-1 agreement."""

    nll_art: float = 0.0
    nll_ref: float = 0.0
    kld_sum: float = 0.0
    kld_max: float = 0.0
    same_top1: int = 0
    n: int = 0
    max_abs: float = 0.0
    kld_values: list[float] = field(default_factory=list)

    def add(self, ref_logits: np.ndarray, art_logits: np.ndarray, tokens: np.ndarray,
            first: int) -> None:
        """Score positions ``first .. len-2`` (each predicts the following token)."""
        ref = ref_logits[first:-1]
        art = art_logits[first:-1]
        target = np.asarray(tokens[first + 1 :])
        lp_ref = log_softmax(ref)
        lp_art = log_softmax(art)
        idx = np.arange(len(target))
        self.nll_ref -= float(lp_ref[idx, target].sum())
        self.nll_art -= float(lp_art[idx, target].sum())
        kld = (np.exp(lp_ref) * (lp_ref - lp_art)).sum(axis=-1)
        self.kld_sum += float(kld.sum())
        self.kld_max = max(self.kld_max, float(kld.max()))
        self.kld_values.extend(kld.tolist())
        self.same_top1 += int((ref.argmax(-1) == art.argmax(-1)).sum())
        self.n += len(target)
        self.max_abs = max(self.max_abs, float(np.abs(ref_logits - art_logits).max()))

    def summary(self) -> dict[str, float]:
        """The metrics: ppl, ppl_reference, kld_mean, kld_p99, top1_agreement, max diff."""
        n = max(self.n, 1)
        kld = np.asarray(self.kld_values) if self.kld_values else np.zeros(1)
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
