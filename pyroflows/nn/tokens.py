"""Networks on token sequences ``(batch, length)`` -> logits ``(batch, length, vocab)``.

``SequenceTransformer`` is a pre-norm transformer encoder; bidirectional with a
time input (discrete flow matching) or causal without one (the autoregressive
baseline). ``ConvNet8`` reads 64 tokens as an 8x8 image through `UNet8`.

Examples:
    >>> net = SequenceTransformer(5, length=7, out_vocab_size=4, dim=16, depth=1, heads=2)
    >>> net(torch.zeros(3, 7, dtype=torch.long), torch.rand(3)).shape
    torch.Size([3, 7, 4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyroflows.nn.velocity import TimeEmbedding, UNet8
from pyroflows.validation import check_tokens

__all__ = ["ConvNet8", "SequenceTransformer"]


class SequenceTransformer(nn.Module):
    """Token + position embeddings (+ a time embedding added to every token),
    ``depth`` pre-norm transformer layers (GELU, no dropout), a linear read-out.

    Args:
        vocab_size: input symbols (include the mask token if the path has one).
        length: sequence length.
        out_vocab_size: output classes per position (default ``vocab_size``).
        causal: attend only to earlier positions (autoregressive models).
        time: read a time ``t`` (scalar or one per sequence).
        kernel: width of a 1-D convolution over the embeddings before the first layer
            (residual; left-padded when causal), a local bias that makes neighbours
            visible from the first step; 0 turns it off.
        pairs: offset pairs ``(a, b)``; for each, position ``i`` adds a learned
            embedding of the symbol pair ``(x[i + a], x[i + b])`` (one table over all
            pairs, positions off the ends read as a padding symbol). A pair table holds
            any function of two neighbours exactly, which a sum of single-token
            embeddings cannot: ``((-2, -1), (-1, 1), (1, 2))`` gives a bidirectional
            model an order-2 chain's three transition terms in one lookup each;
            ``((-1, 0),)`` gives a causal model (inputs shifted by one) its context.
            Each pair also adds a table of logits straight to the output (zero at
            initialisation): log-linear n-gram terms next to the transformer.
        pair_logit_scale: multiplier of those logit tables. Adam moves a parameter
            about ``lr`` per step, so at 1 the tables need thousands of steps to reach
            the log-odds of rare transitions (-8 and below); 10 lets them get there.
        self_condition: also read ``beliefs``, per-position probabilities over the
            ``out_vocab_size`` classes (a previous prediction; self-conditioning, Chen et
            al. 2022), through a linear embedding added to the tokens'.
    """

    def __init__(
        self,
        vocab_size: int,
        length: int,
        out_vocab_size: int | None = None,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        causal: bool = False,
        time: bool = True,
        kernel: int = 5,
        pairs: Sequence[tuple[int, int]] = (),
        pair_logit_scale: float = 10.0,
        self_condition: bool = False,
    ) -> None:
        super().__init__()
        self.pairs = _check_pairs(pairs, length)
        self.vocab_size, self.length, self.causal = vocab_size, length, causal
        self.tokens = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.tokens.weight, std=0.02)  # on the scale of the positions (as in GPT-2)
        self.positions = nn.Parameter(0.02 * torch.randn(length, dim))
        self.kernel = kernel
        self.pair_tables = nn.ModuleList(nn.Embedding((vocab_size + 1) ** 2, dim) for _ in self.pairs)
        for table in self.pair_tables:
            nn.init.normal_(table.weight, std=0.02)
        self.pair_logit_scale = pair_logit_scale
        out_size = out_vocab_size or vocab_size
        self.beliefs = nn.Linear(out_size, dim, bias=False) if self_condition else None
        self.pair_logits = nn.ModuleList(nn.Embedding((vocab_size + 1) ** 2, out_size) for _ in self.pairs)
        for table in self.pair_logits:
            nn.init.zeros_(table.weight)
        self.conv = nn.Conv1d(dim, dim, kernel) if kernel else None
        self.embed = TimeEmbedding(8) if time else None
        self.time = nn.Sequential(nn.Linear(self.embed.dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if time else None
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_vocab_size or vocab_size)
        if causal:
            mask = nn.Transformer.generate_square_subsequent_mask(length)
            self.register_buffer("causal_mask", mask, persistent=False)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor | None = None, beliefs: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_tokens(x, self.length)
        h = self.tokens(x) + self.positions
        if beliefs is not None:
            if self.beliefs is None:
                raise ValueError("this network was built without self_condition; got beliefs")
            expected = (*x.shape, self.beliefs.in_features)
            if beliefs.shape != expected:
                raise ValueError(f"beliefs must have shape {expected}, got {tuple(beliefs.shape)}")
            h = h + self.beliefs(beliefs.to(h))
        direct = 0
        for (a, b), table, logits in zip(self.pairs, self.pair_tables, self.pair_logits, strict=True):
            index = _shifted(x, a, self.vocab_size) * (self.vocab_size + 1) + _shifted(x, b, self.vocab_size)
            h = h + table(index)
            direct = direct + logits(index)
        if self.time is not None:
            if t is None:
                raise ValueError("this network reads a time t; got None")
            h = h + self.time(self.embed(t, x.shape[:1]).to(h))[:, None]
        if self.conv is not None:
            left = self.kernel - 1 if self.causal else (self.kernel - 1) // 2
            padded = nn.functional.pad(h.transpose(1, 2), (left, self.kernel - 1 - left))
            h = h + self.conv(padded).transpose(1, 2)
        mask = self.causal_mask if self.causal else None
        h = self.encoder(h, mask=mask, is_causal=self.causal)
        logits = self.out(self.norm(h))
        return logits + self.pair_logit_scale * direct if self.pairs else logits


def _check_pairs(pairs, length: int) -> tuple[tuple[int, int], ...]:
    out = tuple(tuple(pair) for pair in pairs)
    for pair in out:
        if len(pair) != 2 or not all(isinstance(o, int) and abs(o) < length for o in pair):
            raise ValueError(f"pairs must hold (offset, offset) ints with |offset| < length {length}, got {pair!r}")
    return out


def _shifted(x: torch.Tensor, offset: int, pad: int) -> torch.Tensor:
    """``out[:, i] = x[:, i + offset]``, ``pad`` where ``i + offset`` falls off the sequence."""
    if offset == 0:
        return x
    out = torch.full_like(x, pad)
    if offset > 0:
        out[:, :-offset] = x[:, offset:]
    else:
        out[:, -offset:] = x[:, :offset]
    return out


class ConvNet8(nn.Module):
    """64 tokens as an 8x8 image: token embeddings as channels, a `UNet8`
    (time-conditioned) to ``out_vocab_size`` logits per pixel."""

    def __init__(self, vocab_size: int, out_vocab_size: int | None = None, embed_dim: int = 16, width: int = 32):
        super().__init__()
        self.vocab_size = vocab_size
        self.tokens = nn.Embedding(vocab_size, embed_dim)
        self.unet = UNet8(embed_dim, width, out_channels=out_vocab_size or vocab_size)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_tokens(x, 64)
        h = self.tokens(x).transpose(1, 2).reshape(len(x), -1, 8, 8)
        return self.unet(h, t).flatten(2).transpose(1, 2)
