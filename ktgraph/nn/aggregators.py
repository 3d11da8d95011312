"""Aggregator nodes: values computed from other nodes' outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MeanLogits(nn.Module):
    """The mean of its inputs' logits (an ensemble, or a peer-mean teacher)."""

    def forward(self, logits: list[Tensor]) -> Tensor:
        return torch.stack(logits, dim=0).mean(dim=0)


class PeerAttention(nn.Module):
    """OKDDip's attention-based targets (Chen et al., AAAI 2020).

    Each peer a gets t_a = sum_b alpha_ab z_b with alpha_ab = softmax_b <W_L h_a, W_E h_b>,
    b running over all peers including a. h is the globally pooled feature of each peer;
    W_L and W_E are bias-free projections d -> d/reduction shared by all peers.
    """

    def __init__(self, feature_dim: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, feature_dim // reduction)
        self.query = nn.Linear(feature_dim, hidden, bias=False)  # W_L
        self.key = nn.Linear(feature_dim, hidden, bias=False)  # W_E

    def attention(self, features: list[Tensor]) -> Tensor:
        """alpha of shape (B, m, m): row a holds peer a's weights over the peers b."""
        h = torch.stack([f.flatten(2).mean(dim=2) if f.dim() > 2 else f for f in features], dim=1)
        energy = torch.bmm(self.query(h), self.key(h).transpose(1, 2))
        return F.softmax(energy, dim=2)

    def forward(self, logits: list[Tensor], features: list[Tensor]) -> list[Tensor]:
        alpha = self.attention(features)
        targets = torch.bmm(alpha, torch.stack(logits, dim=1))
        return list(targets.unbind(dim=1))
