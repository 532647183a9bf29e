"""Q-Formers: compress each BEAM token type to a fixed number of LLM-width tokens.

One Q-Former per token type (BEV, ego, agent, map), as in DiMA: learned queries run
self-attention among themselves and cross-attention to that type's tokens (a
pre-norm transformer decoder layer is exactly that block), then a linear projection
maps them to the LLM embedding width.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TOKEN_TYPES, MLLMConfig


def sine_pos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """(h*w, dim) fixed 2-D sinusoidal encoding, row-major like the BEV token order.

    BEV cells must carry their position into the Q-Former: otherwise cross-attention is
    permutation invariant and a masked cell could not be told from any other.
    """
    if dim % 4:
        raise ValueError(f"sine_pos_2d needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    freq = torch.exp(torch.arange(quarter, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    ys, xs = ys.reshape(-1, 1) * freq, xs.reshape(-1, 1) * freq
    return torch.cat([ys.sin(), ys.cos(), xs.sin(), xs.cos()], dim=1)


class QFormer(nn.Module):
    """Learned queries cross-attending to one token type; output (B, num_queries, out_dim)."""

    def __init__(self, in_dim: int, dim: int, out_dim: int, num_queries: int,
                 num_layers: int = 2, num_heads: int = 8, ffn_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.in_proj = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(dim, num_heads, dim * ffn_mult, dropout,
                                       batch_first=True, norm_first=True)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.Linear(dim, out_dim)
        # A learned always-present memory slot: a sample whose tokens are all masked
        # (every agent removed) still has a defined, learnable "nothing here" input.
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, N, in_dim); pos (N or B×N, dim) added after the input projection;
        key_padding_mask (B, N), True = ignore (e.g. padded or removed agents)."""
        if tokens.dim() != 3:
            raise ValueError(f"QFormer expects tokens of shape (B, N, C), got {tuple(tokens.shape)}")
        memory = self.in_proj(tokens)
        if pos is not None:
            memory = memory + pos
        b = tokens.shape[0]
        memory = torch.cat([self.null_token.expand(b, -1, -1), memory], dim=1)
        if key_padding_mask is not None:
            key_padding_mask = torch.cat(
                [torch.zeros(b, 1, dtype=torch.bool, device=tokens.device), key_padding_mask.bool()], dim=1)
        q = self.queries.unsqueeze(0).expand(b, -1, -1)
        for layer in self.layers:
            q = layer(q, memory, memory_key_padding_mask=key_padding_mask)
        return self.out_proj(self.norm(q))


class BEAMQFormers(nn.Module):
    """One Q-Former per token type; forward returns the LLM prefix [B | E | A | M] (B, Q_total, D).
    A type configured with 0 queries has no Q-Former and no place in the prefix."""

    def __init__(self, cfg: MLLMConfig, llm_dim: int):
        super().__init__()
        q = cfg.qformer
        self.types = tuple(t for t in TOKEN_TYPES if q.num_queries[t] > 0)
        self.num_queries = {t: q.num_queries[t] for t in self.types}
        self.token_dim = cfg.token_dim
        self.bev_hw = tuple(cfg.bev_hw)
        self.qformers = nn.ModuleDict({
            t: QFormer(cfg.token_dim, q.dim, llm_dim, q.num_queries[t], q.num_layers,
                       q.num_heads, q.ffn_mult, q.dropout)
            for t in self.types
        })
        self.register_buffer("bev_pos", sine_pos_2d(*self.bev_hw, q.dim), persistent=False)

    @property
    def total_queries(self) -> int:
        return sum(self.num_queries.values())

    def slices(self) -> dict[str, slice]:
        """Where each type's queries sit in the prefix."""
        out, start = {}, 0
        for t in self.types:
            out[t] = slice(start, start + self.num_queries[t])
            start += self.num_queries[t]
        return out

    def check(self, beam: dict[str, torch.Tensor]) -> None:
        """Clear errors for malformed BEAM token dicts (the planner's contract)."""
        missing = [t for t in TOKEN_TYPES if t not in beam]
        if missing:
            raise KeyError(f"BEAM tokens lack {missing}; expected keys {list(TOKEN_TYPES)}")
        b = beam["bev"].shape[0]
        for t in TOKEN_TYPES:
            x = beam[t]
            if x.dim() != 3 or x.shape[0] != b or x.shape[2] != self.token_dim:
                raise ValueError(
                    f"BEAM tokens[{t!r}] has shape {tuple(x.shape)}; expected ({b}, N, {self.token_dim})"
                )
        hw = self.bev_hw[0] * self.bev_hw[1]
        if beam["bev"].shape[1] != hw:
            raise ValueError(
                f"BEV tokens have {beam['bev'].shape[1]} cells but bev_hw={self.bev_hw} gives {hw}"
            )

    def forward(self, beam: dict[str, torch.Tensor],
                masks: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """beam: {"bev": (B, H*W, C), "ego": (B, 1, C), "agent": (B, Na, C), "map": (B, Nm, C)};
        masks: optional key-padding masks per type (B, N), True = ignore."""
        self.check(beam)
        masks = masks or {}
        outs = []
        for t in self.types:
            pos = self.bev_pos if t == "bev" else None
            outs.append(self.qformers[t](beam[t], pos=pos, key_padding_mask=masks.get(t)))
        return torch.cat(outs, dim=1)
