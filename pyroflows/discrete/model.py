"""Discrete flow matching on continuous-time Markov chains (Gat et al. 2024; Campbell et al. 2024).

A network reads a partly noised sequence ``x_t`` and the time ``t`` and returns,
per position, logits of the posterior ``p(x_1^i | x_t)``. Along a mixture path
that posterior gives the CTMC rates ``lambda_t (p(y | x_t) - delta(y = x_t^i))``
(one position jumps at a time), which the sampler integrates.

Losses, per position, with ``lambda_t = kappa_t' / (1 - kappa_t)``:

- ``"ce"``: cross-entropy ``-log p(x_1^i | x_t)``;
- ``"kl"``: the generalised KL (Bregman divergence) between the conditional and
  the model rates,
  ``lambda_t [1 - p(x_t^i | x_t) - 1(x_t^i != x_1^i) (1 + log p(x_1^i | x_t))]``.

Its integral over ``t`` bounds the negative log-likelihood of a sequence
(`DiscreteFlowMatcher.elbo`). With a mask source, unmasked positions copy
their token (the posterior there is a point mass), so only masked positions count.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from pyroflows.discrete.paths import MixturePath
from pyroflows.discrete.sampling import Sampler
from pyroflows.validation import check_tokens

__all__ = ["DiscreteFlowMatcher"]

LOSSES = ("ce", "kl")


def _takes_beliefs(net: nn.Module) -> bool:
    params = list(inspect.signature(net.forward).parameters.values())
    return len(params) >= 3 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


class DiscreteFlowMatcher(Sampler, nn.Module):
    """A discrete flow-matching model for sequences of ``length`` tokens.

    Args:
        net: ``net(x_t, t) -> logits`` with ``x_t`` int64 of shape ``(batch, length)``
            (values below ``path.input_vocab_size``), ``t`` of shape ``(batch,)``,
            logits of shape ``(batch, length, vocab_size)``.
        path: the `MixturePath` (vocabulary, source, scheduler).
        length: sequence length.
        self_condition: self-conditioning (Chen et al. 2022): the network also reads
            ``beliefs``, its own earlier posterior probabilities (zero at visible positions
            of a mask source), as ``net(x_t, t, beliefs)``. Training feeds a first pass's
            beliefs (no gradient) to half of each batch and zeros to the rest; the sampler
            feeds the previous step's (one call per step); `logits` (hence the
            bounds) makes two calls, the second reading the first's beliefs.

    Examples:
        >>> from pyroflows.nn.tokens import SequenceTransformer
        >>> path = MixturePath(5, "mask")
        >>> net = SequenceTransformer(path.input_vocab_size, 8, out_vocab_size=5, dim=16, depth=1, heads=2)
        >>> model = DiscreteFlowMatcher(net, path, length=8)
        >>> model.sample(3, steps=4).shape
        torch.Size([3, 8])
    """

    def __init__(self, net: nn.Module, path: MixturePath, length: int, self_condition: bool = False) -> None:
        super().__init__()
        if not isinstance(path, MixturePath):
            raise TypeError(f"path must be a MixturePath, got {type(path).__name__}")
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.net, self.path, self.length = net, path, length
        self.self_condition = bool(self_condition)
        if self.self_condition and not _takes_beliefs(net):
            raise TypeError(f"self_condition needs net(x_t, t, beliefs); {type(net).__name__}.forward takes no beliefs")

    @property
    def vocab_size(self) -> int:
        return self.path.vocab_size

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def validate_data(self, x_1: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x_1`` is int64 ``(batch, length)`` with tokens in ``[0, vocab_size)``."""
        check_tokens(x_1, self.length, self.vocab_size)

    def logits(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's posterior logits ``(batch, length, vocab_size)`` (shape checked);
        with self-conditioning, the second of two calls."""
        out = self._call(x_t, t)
        return self._call(x_t, t, self._beliefs(out, x_t)) if self.self_condition else out

    def _call(self, x_t: torch.Tensor, t: torch.Tensor, beliefs: torch.Tensor | None = None) -> torch.Tensor:
        if self.self_condition:
            beliefs = x_t.new_zeros((*x_t.shape, self.vocab_size), dtype=t.dtype) if beliefs is None else beliefs
            out = self.net(x_t, t, beliefs)
        else:
            out = self.net(x_t, t)
        expected = (*x_t.shape, self.vocab_size)
        if out.shape != expected:
            raise ValueError(f"the network must return logits of shape {expected}, got {tuple(out.shape)}")
        return out

    def _beliefs(self, logits: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """Posterior probabilities (no gradient), zero where a mask source shows the token."""
        probs = logits.detach().softmax(-1)
        if self.path.source == "mask":
            probs = probs * (x_t == self.path.mask_token)[..., None]
        return probs

    # -- training -----------------------------------------------------------------
    def _position_terms(self, x_1: torch.Tensor, t: torch.Tensor, kind: str, train: bool = False) -> torch.Tensor:
        """Per-position loss terms ``(batch, length)`` at times ``t`` (one per sequence);
        ``train``: self-conditioning on a random half of the batch."""
        x_t = self.path.sample(self.path.sample_source(x_1.shape, x_1.device), x_1, t)
        if train and self.self_condition:
            beliefs = x_t.new_zeros((*x_t.shape, self.vocab_size), dtype=t.dtype)
            half = torch.rand(len(x_t), device=x_t.device) < 0.5
            with torch.no_grad():  # the first pass only where its beliefs are used
                beliefs[half] = self._beliefs(self._call(x_t[half], t[half]), x_t[half])
            log_p = self._call(x_t, t, beliefs).log_softmax(-1)
        else:
            log_p = self.logits(x_t, t).log_softmax(-1)
        log_p_data = log_p.gather(-1, x_1[..., None]).squeeze(-1)
        if self.path.source == "mask":  # unmasked positions are copied: no loss there
            masked = x_t == self.path.mask_token
            term = -log_p_data if kind == "ce" else -self.path.jump_rate(t)[:, None] * log_p_data
            return torch.where(masked, term, torch.zeros_like(term))
        if kind == "ce":
            return -log_p_data
        p_stay = log_p.gather(-1, x_t[..., None]).squeeze(-1).exp()
        moved = (x_t != x_1).to(log_p.dtype)
        return self.path.jump_rate(t)[:, None] * (1 - p_stay - moved * (1 + log_p_data))

    def loss(self, x_1: torch.Tensor, kind: str = "ce", *, validate: bool = True) -> torch.Tensor:
        """The training loss on a batch of sequences: mean over batch and positions
        (``validate=False`` skips the token checks, for a loop that checked its data once)."""
        if kind not in LOSSES:
            raise ValueError(f"kind must be one of {LOSSES}, got {kind!r}")
        if validate:
            self.validate_data(x_1)
        return self._loss(x_1, kind)

    def _loss(self, x_1: torch.Tensor, kind: str) -> torch.Tensor:
        t = torch.rand(len(x_1), device=x_1.device)
        return self._position_terms(x_1, t, kind, train=True).mean()

    @torch.no_grad()
    def elbo(self, x_1: torch.Tensor, num_times: int = 32, batch_size: int = 512) -> torch.Tensor:
        """An upper bound on ``-log p(x_1)`` in nats, one per sequence: the generalised-KL
        integrand averaged over ``num_times`` stratified times in (0, 1).
        Divide by ``length`` for nats per token."""
        self.validate_data(x_1)
        if not isinstance(num_times, int) or num_times < 1:
            raise ValueError(f"num_times must be a positive int, got {num_times!r}")
        bounds = []
        for chunk in x_1.split(batch_size):
            total = torch.zeros(len(chunk), device=chunk.device)
            offsets = torch.rand(len(chunk), device=chunk.device)
            for k in range(num_times):
                t = ((k + offsets) / num_times).clamp(max=1 - 1e-6)
                total += self._position_terms(chunk, t, "kl").sum(-1)
            bounds.append(total / num_times)
        return torch.cat(bounds)

    @torch.no_grad()
    def iw_bound(
        self,
        x_1: torch.Tensor,
        num_samples: int = 16,
        batch_size: int = 512,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """An importance-weighted upper bound on ``-log p(x_1)`` (nats, one per
        sequence) for a mask source, tighter than `elbo` as ``num_samples`` grows.

        In continuous time each position unmasks at its own time ``T_i`` (``kappa_{T_i}``
        uniform) and then draws its token given the positions unmasked before it, so
        ``p(x) = E_T[prod_i p(x^i | x^{T_j < T_i}, T_i)]``. Drawing ``num_samples``
        sets of times ``T`` from that prior gives the bound
        ``-log mean_k prod_i p(...)`` (Burda et al.'s importance-weighted bound). With
        one sample its expectation is the ELBO. Costs ``length`` network calls per
        sample and sequence."""
        self.validate_data(x_1)
        if self.path.source != "mask":
            raise ValueError(f"iw_bound needs a mask source, got a {self.path.source} source")
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        rows = max(1, batch_size // num_samples)
        bounds = []
        for chunk in x_1.split(rows):
            x = chunk.repeat(num_samples, 1)  # (num_samples * n, length), sample-major
            u = torch.rand(x.shape, generator=generator, device=x.device)
            times = self.path.scheduler.inverse(u)
            log_w = torch.zeros(len(x), device=x.device)
            masked = torch.full_like(x, self.path.mask_token)
            for i in range(self.length):
                t_i = times[:, i]
                x_t = torch.where(times < t_i[:, None], x, masked)
                log_p = self.logits(x_t, t_i)[:, i].log_softmax(-1)
                log_w += log_p.gather(-1, x[:, i : i + 1]).squeeze(-1)
            log_w = log_w.view(num_samples, len(chunk))
            bounds.append(math.log(num_samples) - log_w.logsumexp(0))
        return torch.cat(bounds)

    # -- sampling ----------------------------------------------------------------
