"""Per-sample loss terms, in torch's functional style.

Each function returns a vector of shape (B,): one loss per sample. Gates then decide
how the vector becomes a scalar (mean, masked sum over B, ramped mean), so every
loss shares one reduction convention: summed over classes/elements of a sample,
averaged over the batch ("batchmean") -- never an elementwise mean over B*C.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """CE(z, y) per sample."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def kl_divergence(source: Tensor, target: Tensor, T: float = 1.0) -> Tensor:
    """T^2 * KL(softmax(source/T) || softmax(target/T)) per sample.

    The source is the teacher (the distribution being matched), the target the student.
    """
    log_p_source = F.log_softmax(source.float() / T, dim=1)
    log_p_target = F.log_softmax(target.float() / T, dim=1)
    return (T * T) * (log_p_source.exp() * (log_p_source - log_p_target)).sum(dim=1)


def feature_mimic(source: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    """Distance between a target feature and a source (teacher) feature, per sample.

    ``mse`` and ``l1`` are means over the feature's elements, so their batch mean
    equals the elementwise mean over the whole tensor (FitNet's common convention);
    ``cosine`` is 1 - cos between the flattened features.
    """
    s, t = source.float().flatten(1), target.float().flatten(1)
    if kind == "mse":
        return (t - s).pow(2).mean(dim=1)
    if kind == "l1":
        return (t - s).abs().mean(dim=1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(t, s, dim=1)
    raise ValueError(f"unknown feature mimic loss {kind!r}")


def correct_mask(logits: Tensor, labels: Tensor) -> Tensor:
    """1.0 where the logits' top class is the label, else 0.0."""
    return (logits.argmax(dim=1) == labels).to(torch.float32)
