"""Vision-language connectors: patch features (views, grid*grid, enc_width) -> image tokens (views, T, llm_width).

All share one interface and one token rule (`output_tokens`), which the processor uses to place exactly as many
image placeholders as the model will produce.  MM1 found resolution and token count matter far more than the
connector type; C-Abstractor (Honeybee) is the default because it keeps spatial locality.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mm1.config import ConnectorConfig
from mm1.registry import Registry

CONNECTORS: Registry[type["Connector"]] = Registry("connector")


def output_tokens(cfg: ConnectorConfig, grid: int) -> int:
    """Image tokens one encoder view of `grid` x `grid` patches becomes."""
    return CONNECTORS.get(cfg.type).output_tokens(cfg, grid)


def readout(in_dim: int, out_dim: int, depth: int) -> nn.Sequential:
    """LLaVA-1.5-style projection: Linear, then (GELU, Linear) repeated."""
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


def to_grid(features: torch.Tensor) -> torch.Tensor:
    """(views, grid*grid, C) -> (views, C, grid, grid)."""
    views, n, channels = features.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"connector expects a square patch grid, got {n} patches")
    return features.transpose(1, 2).reshape(views, channels, side, side)


class GridPosition(nn.Module):
    """A learned embedding of each token's (row, column) centre in its view, from Fourier features of the
    coordinates scaled to 0..1, so one set of weights serves every token grid (mlp at another resolution).

    The LLM's RoPE puts position into attention scores only, never into the values it reads, so without this an
    answer in coordinates has to be inferred from which token was attended to; with it, "where" is in the token."""

    def __init__(self, out_dim: int, frequencies: int = 6):
        super().__init__()
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(frequencies), persistent=False)
        self.proj = nn.Linear(4 * frequencies, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(tokens.shape[1])
        centres = (torch.arange(side, device=tokens.device, dtype=self.frequencies.dtype) + 0.5) / side
        rows, cols = torch.meshgrid(centres, centres, indexing="ij")
        angles = torch.stack([rows.flatten(), cols.flatten()], -1).unsqueeze(-1) * self.frequencies
        fourier = torch.cat([angles.sin(), angles.cos()], -1).flatten(1).to(tokens.dtype)  # (side*side, 4F)
        return tokens + self.proj(fourier)


class Connector(nn.Module):
    """Subclasses turn patch features into tokens (`tokens`); `forward` adds the grid position and normalises
    when configured."""

    def __init__(self, cfg: ConnectorConfig, in_dim: int, out_dim: int):
        super().__init__()
        self.cfg = cfg
        self.position = GridPosition(out_dim) if cfg.position_embedding else None
        self.norm = nn.RMSNorm(out_dim) if cfg.output_norm else None  # its gain is set by the MLLM (mllm.py)

    @staticmethod
    def output_tokens(cfg: ConnectorConfig, grid: int) -> int:
        return cfg.tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(features)
        if self.position is not None:
            tokens = self.position(tokens)
        return tokens if self.norm is None else self.norm(tokens)


@CONNECTORS.register("mlp")
class MLPProjector(Connector):
    """No token reduction: every patch becomes a token (LLaVA-1.5 mlp2x_gelu with mlp_depth=2)."""

    def __init__(self, cfg, in_dim, out_dim):
        super().__init__(cfg, in_dim, out_dim)
        self.proj = readout(in_dim, out_dim, cfg.mlp_depth)

    @staticmethod
    def output_tokens(cfg, grid):
        return grid * grid

    def tokens(self, features):
        return self.proj(features)


@CONNECTORS.register("avg-pool")
class AvgPoolConnector(Connector):
    """n x n average pooling of the patch grid, then projection (Emu2-style)."""

    def __init__(self, cfg, in_dim, out_dim):
        super().__init__(cfg, in_dim, out_dim)
        self.side = math.isqrt(cfg.tokens)
        self.proj = readout(in_dim, out_dim, cfg.mlp_depth)

    def tokens(self, features):
        pooled = F.adaptive_avg_pool2d(to_grid(features), self.side)
        return self.proj(pooled.flatten(2).transpose(1, 2))


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_ff = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, queries, kv):
        kv = self.norm_kv(kv)
        queries = queries + self.attn(self.norm_q(queries), kv, kv, need_weights=False)[0]
        return queries + self.ff(self.norm_ff(queries))


@CONNECTORS.register("attn-pool")
class AttentionPoolConnector(Connector):
    """`tokens` learned queries cross-attend to the patch features."""

    def __init__(self, cfg, in_dim, out_dim):
        super().__init__(cfg, in_dim, out_dim)
        dim = cfg.hidden_size or in_dim
        heads = next(h for h in (16, 8, 4, 2, 1) if dim % h == 0)
        self.inp = nn.Linear(in_dim, dim) if dim != in_dim else nn.Identity()
        self.queries = nn.Parameter(torch.randn(cfg.tokens, dim) * dim**-0.5)
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, heads) for _ in range(max(cfg.depth, 1)))
        self.proj = readout(dim, out_dim, cfg.mlp_depth)

    def tokens(self, features):
        kv = self.inp(features)
        queries = self.queries.unsqueeze(0).expand(features.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(queries, kv)
        return self.proj(queries)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ResBlock(nn.Module):
    """RegNet-style bottleneck with squeeze-excitation, as in Honeybee's C-Abstractor stages."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, 1, bias=False), LayerNorm2d(out_dim), nn.SiLU(),
            nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False), LayerNorm2d(out_dim), nn.SiLU(),
        )
        squeeze = max(out_dim // 4, 1)
        self.excite = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(out_dim, squeeze, 1), nn.SiLU(), nn.Conv2d(squeeze, out_dim, 1), nn.Sigmoid()
        )
        self.out = nn.Sequential(nn.Conv2d(out_dim, out_dim, 1, bias=False), LayerNorm2d(out_dim))
        self.shortcut = nn.Identity() if in_dim == out_dim else nn.Conv2d(in_dim, out_dim, 1, bias=False)

    def forward(self, x):
        y = self.body(x)
        y = self.out(y * self.excite(y))
        return F.silu(y + self.shortcut(x))


@CONNECTORS.register("c-abstractor")
class CAbstractor(Connector):
    """Convolutional abstractor: ResNet blocks, adaptive average pooling to the token grid, ResNet blocks, MLP."""

    def __init__(self, cfg, in_dim, out_dim):
        super().__init__(cfg, in_dim, out_dim)
        dim = cfg.hidden_size or in_dim
        self.side = math.isqrt(cfg.tokens)
        self.before = nn.Sequential(*(ResBlock(in_dim if i == 0 else dim, dim) for i in range(cfg.depth)))
        self.after = nn.Sequential(*(ResBlock(dim, dim) for _ in range(cfg.depth)))
        self.proj = readout(dim, out_dim, cfg.mlp_depth)

    def tokens(self, features):
        x = self.before(to_grid(features))
        x = self.after(F.adaptive_avg_pool2d(x, self.side))
        return self.proj(x.flatten(2).transpose(1, 2))


def build_connector(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> Connector:
    return CONNECTORS.get(cfg.type)(cfg, in_dim, out_dim)
