"""Torch networks: the ranker and the two-tower retriever.

Both take already-encoded dense features (see ``rayml.features.FeatureEncoder``).
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Ranker(nn.Module):
    """Scores (user, item) pairs from the concatenation [user features | item features].

    A bilinear cross term (projected user ⊙ projected item) lets a small MLP model taste matches.
    Input [N, user_dim + item_dim] → logit [N].
    """

    def __init__(self, user_dim: int, item_dim: int, cross_dim: int = 32, hidden: tuple[int, ...] = (128, 64)):
        super().__init__()
        self.user_dim = user_dim
        self.user_proj = nn.Linear(user_dim, cross_dim)
        self.item_proj = nn.Linear(item_dim, cross_dim)
        self.head = mlp([user_dim + item_dim + cross_dim, *hidden, 1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        user, item = features[:, : self.user_dim], features[:, self.user_dim :]  # [N, U], [N, I]
        cross = self.user_proj(user) * self.item_proj(item)  # [N, C]
        return self.head(torch.cat([features, cross], dim=1)).squeeze(1)  # [N]


class ScoreHead(nn.Module):
    """Export wrapper for any ranker: click probability in [0, 1] instead of a logit."""

    def __init__(self, ranker: nn.Module):
        super().__init__()
        self.ranker = ranker

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.ranker(features))


class TwoTower(nn.Module):
    """User and item towers whose dot product (plus an item bias) is the click logit.

    ``user(x)`` [N, U] → [N, E]; ``item(x)`` [M, I] → [M, E]; ``forward`` scores aligned pairs → [N].
    """

    def __init__(self, user_dim: int, item_dim: int, embedding_dim: int = 32, hidden: int = 64):
        super().__init__()
        self.user_tower = mlp([user_dim, hidden, embedding_dim])
        self.item_tower = mlp([item_dim, hidden, embedding_dim])
        self.item_bias = nn.Linear(item_dim, 1)

    def user(self, x: torch.Tensor) -> torch.Tensor:
        return self.user_tower(x)

    def item(self, x: torch.Tensor) -> torch.Tensor:
        """Item embedding with the bias appended as a last column: [M, E + 1]."""
        return torch.cat([self.item_tower(x), self.item_bias(x)], dim=1)

    def forward(self, user_x: torch.Tensor, item_x: torch.Tensor) -> torch.Tensor:
        return (self.user_tower(user_x) * self.item_tower(item_x)).sum(1) + self.item_bias(item_x).squeeze(1)


class UserTowerExport(nn.Module):
    """Export wrapper: user embedding with a constant 1 appended, so ``user · item`` includes the bias."""

    def __init__(self, model: TwoTower):
        super().__init__()
        self.tower = model.user_tower

    def forward(self, user_features: torch.Tensor) -> torch.Tensor:
        emb = self.tower(user_features)  # [N, E]
        return torch.cat([emb, torch.ones_like(emb[:, :1])], dim=1)  # [N, E + 1]


class Teacher(nn.Module):
    """The large ranker: [features | cross] → deep MLP with dropout. Input [N, U + I + P] → logit [N].

    ``P = privileged_dim`` trailing columns are offline-only features (``rayml.models.privileged``); they join
    the user side of the cross term, so ``cross = proj([user | privileged]) ⊙ proj(item)``.
    """

    def __init__(self, user_dim: int, item_dim: int, cross_dim: int = 64,
                 hidden: tuple[int, ...] = (512, 256, 128), dropout: float = 0.2, privileged_dim: int = 0):
        super().__init__()
        self.user_dim, self.item_dim = user_dim, item_dim
        self.user_proj = nn.Linear(user_dim + privileged_dim, cross_dim)
        self.item_proj = nn.Linear(item_dim, cross_dim)
        sizes = [user_dim + item_dim + privileged_dim + cross_dim, *hidden]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU(), nn.Dropout(dropout)]
        self.deep = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        u, i = self.user_dim, self.user_dim + self.item_dim
        user = torch.cat([features[:, :u], features[:, i:]], dim=1)  # [N, U + P]
        cross = self.user_proj(user) * self.item_proj(features[:, u:i])  # [N, C]
        return self.deep(torch.cat([features, cross], dim=1)).squeeze(1)  # [N]


class Student(nn.Module):
    """The small ranker: a plain MLP (int8 quantization speeds its matmuls up). Input [N, F] → logit [N]."""

    def __init__(self, input_dim: int, hidden: tuple[int, ...] = (256, 128)):
        super().__init__()
        self.net = mlp([input_dim, *hidden, 1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(1)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
