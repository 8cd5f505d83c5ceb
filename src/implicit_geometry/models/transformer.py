"""A small causal transformer (pre-LayerNorm, learned positions, untied unembedding without bias).

``context_embeddings(x)`` returns the last-layer representation at the last position (after the final LayerNorm),
so that the next-token logits are exactly ``W h`` with ``W = unembedding.weight`` (V x d): the log-bilinear
picture of :mod:`implicit_geometry.ntp` applies to ``(W, h)``.

>>> import torch
>>> net = CausalTransformer(vocab_size=5, context=4, dim=16, layers=1, heads=2)
>>> net(torch.zeros(3, 4, dtype=torch.long)).shape
torch.Size([3, 5])
"""

from __future__ import annotations

import torch
from torch import nn

from implicit_geometry._validation import InvalidParameterError, check_int


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """Decoder-only transformer over contexts of at most ``context`` tokens."""

    def __init__(self, vocab_size: int, context: int, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, minimum=2)
        self.context = check_int("context", context, minimum=1)
        dim = check_int("dim", dim, minimum=2)
        check_int("layers", layers, minimum=1)
        heads = check_int("heads", heads, minimum=1)
        if dim % heads:
            raise InvalidParameterError(f"dim must be a multiple of heads={heads} (got {dim})")
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(dim)
        self.unembedding = nn.Linear(dim, vocab_size, bias=False)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Final-layer representations at every position (B x T x d)."""
        T = x.shape[1]
        if T > self.context:
            raise InvalidParameterError(f"context length must be at most {self.context} (got {T})")
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=1)
        h = self.embed(x) + self.pos[:T]
        for block in self.blocks:
            h = block(h, mask)
        return self.ln_f(h)

    def context_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The representation h_j of each context (its last position), B x d."""
        return self.hidden(x)[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Next-token logits after each full context (B x V)."""
        return self.unembedding(self.context_embeddings(x))
