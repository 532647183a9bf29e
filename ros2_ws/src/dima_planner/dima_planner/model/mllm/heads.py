"""Task heads of the MLLM branch (DiMA: 3-layer MLPs) and the scene-editing token maker."""
from __future__ import annotations

import torch
from torch import nn

from .qformer import sine_pos_2d


class MLP3(nn.Module):
    """Linear-GELU-Linear-GELU-Linear."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TrajectoryHead(nn.Module):
    """Ego feature (B, D) -> one trajectory per command (B, num_commands, T, 2).

    Predicts per-step offsets and accumulates them, as VAD does, so outputs are absolute
    positions in the current LiDAR frame (the Sample convention).
    """

    def __init__(self, in_dim: int, hidden: int, num_commands: int = 3, steps: int = 6):
        super().__init__()
        self.num_commands, self.steps = num_commands, steps
        self.mlp = MLP3(in_dim, hidden, num_commands * steps * 2)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        deltas = self.mlp(feature).view(-1, self.num_commands, self.steps, 2)
        return deltas.cumsum(dim=2)

    @staticmethod
    def select(trajs: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """(B, K, T, 2) indexed by command (B,) -> (B, T, 2)."""
        return trajs[torch.arange(trajs.shape[0], device=trajs.device), command.long()]


class BEVTokenDecoder(nn.Module):
    """Decode BEV tokens at chosen cells from the LLM's hidden states of the BEAM prefix.

    Each requested cell becomes a query (its 2-D position encoding plus a step
    embedding: 0 = the current frame for masked reconstruction, k = t+k for future
    prediction) that cross-attends once to the LLM outputs at the BEAM positions; a
    3-layer MLP then regresses the token. Querying only chosen cells keeps a 100x100
    grid cheap.
    """

    def __init__(self, llm_dim: int, token_dim: int, hidden: int, bev_hw: tuple[int, int],
                 num_steps: int, num_heads: int = 8):
        super().__init__()
        pos_dim = 64
        self.register_buffer("pos", sine_pos_2d(bev_hw[0], bev_hw[1], pos_dim), persistent=False)
        self.pos_proj = nn.Linear(pos_dim, llm_dim)
        self.step_embed = nn.Embedding(num_steps + 1, llm_dim)
        heads = num_heads if llm_dim % num_heads == 0 else 1
        self.attn = nn.MultiheadAttention(llm_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(llm_dim)
        self.mlp = MLP3(llm_dim, hidden, token_dim)

    def forward(self, context: torch.Tensor, cells: torch.Tensor, step: int) -> torch.Tensor:
        """context (B, L, D) LLM hidden states; cells (B, N) cell indices -> (B, N, token_dim)."""
        q = self.pos_proj(self.pos[cells]) + self.step_embed.weight[step]
        ctx = self.norm(context)
        out, _ = self.attn(q, ctx, ctx, need_weights=False)
        return self.mlp(q + out)


class AgentTokenMaker(nn.Module):
    """Scene editing: a linear layer turns an agent description into a new agent token."""

    def __init__(self, descriptor_dim: int, token_dim: int):
        super().__init__()
        self.linear = nn.Linear(descriptor_dim, token_dim)

    def forward(self, descriptor: torch.Tensor) -> torch.Tensor:
        return self.linear(descriptor)
