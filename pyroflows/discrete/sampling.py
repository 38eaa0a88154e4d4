"""Sampling from a `DiscreteFlowMatcher`: CTMC
Euler (tau-leaping) with an optional corrector, ordered unmasking, and the
exact log-probability of ordered unmasking. A mixin: the matcher owns the
network, the path and the sequence length."""

from __future__ import annotations

import math

import torch

__all__ = ["DETERMINISTIC_ORDERS", "ORDERS", "Sampler"]

ORDERS = ("random", "entropy", "confidence")
DETERMINISTIC_ORDERS = ("entropy", "confidence")  # the order is a function of the tokens drawn


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens and/or the smallest set whose mass reaches ``top_p``."""
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if top_p is not None:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        drop = (mass_before >= top_p).scatter(-1, order, mass_before >= top_p)
        logits = logits.masked_fill(drop, -torch.inf)
    return logits


def _order_scores(log_p: torch.Tensor, order: str, generator: torch.Generator | None) -> torch.Tensor:
    """Per position, higher unmasks first: random, low posterior entropy, or high top probability."""
    if order == "random":
        return torch.rand(log_p.shape[:-1], generator=generator, device=log_p.device)
    if order == "entropy":
        return -torch.special.entr(log_p.exp()).sum(-1)
    return log_p.max(-1).values


def _gumbel_sample(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-20, 1.0)
    return (logits - (-u.log()).log()).argmax(-1)


class Sampler:
    """The samplers of `DiscreteFlowMatcher` (see there)."""

    @torch.no_grad()
    def sample(
        self,
        num: int,
        steps: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        corrector: float = 0.0,
        generator: torch.Generator | None = None,
        batch_size: int = 1024,
        order: str | None = None,
    ) -> torch.Tensor:
        """``num`` sequences by CTMC Euler (tau-leaping) over ``steps`` equal steps, or
        (mask source, ``order`` given) by ordered unmasking.

        CTMC Euler: in a step of length ``h`` each position leaves its state with probability
        ``h lambda_t`` (all of them on the last step) and draws its new token from the
        (tempered, top-k / top-p filtered) posterior; with a mask source only masked
        positions move. ``corrector = c > 0`` (mask source) adds the divergence-free
        corrector of Gat et al.: forward rates times ``1 + beta_t`` and re-masking at
        rate ``beta_t kappa_t' / kappa_t``, ``beta_t = c t (1 - t)``. One network call per step.

        Ordered unmasking (``order`` one of ``"random"``, ``"entropy"``, ``"confidence"``):
        after step ``k`` exactly ``round(length * kappa_{(k+1)/steps})`` positions are
        visible; each step unmasks the masked positions due, chosen at random, by the
        lowest posterior entropy, or by the highest top probability (of the tempered, filtered
        posterior), and draws their tokens from that posterior. A chosen position's token is
        still drawn, never taken as the mode, so with an exact posterior and
        ``steps >= length`` (one position per step) every order samples the data's joint
        law exactly: the chain rule holds for any order that depends only on the tokens
        already drawn (Zheng et al. 2024 for the random order;
        Kim et al. 2025 for adaptive ones). Steps that unmask nothing make no network call,
        so a sample costs ``min(steps, length)`` calls with a linear ``kappa``.
        """
        if not isinstance(num, int) or num < 1:
            raise ValueError(f"number of samples must be a positive int, got {num!r}")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        self._check_sampler(temperature, top_k, top_p, corrector, order)
        filters = (temperature, top_k, top_p)
        chunks = []
        for start in range(0, num, batch_size):
            size = min(batch_size, num - start)
            if order is None:
                chunks.append(self._sample(size, steps, *filters, corrector, generator))
            else:
                chunks.append(self._unmask_in_order(size, steps, *filters, order, generator)[0])
        return torch.cat(chunks)

    def _check_sampler(self, temperature, top_k, top_p, corrector, order) -> None:
        """``ValueError`` naming the first of ``sample``'s sampler options that is out of range."""
        if not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be positive and finite, got {temperature}")
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if not 0 <= corrector < math.inf or (corrector and self.path.source != "mask"):
            got = f"{corrector} with a {self.path.source} source"
            raise ValueError(f"corrector must be finite, >= 0 and needs a mask source, got {got}")
        if order is not None:
            if order not in ORDERS:
                raise ValueError(f"order must be None or one of {ORDERS}, got {order!r}")
            if self.path.source != "mask" or corrector:
                got = f"a {self.path.source} source" + (f" and corrector {corrector}" if corrector else "")
                raise ValueError(f"order needs a mask source and no corrector, got {got}")

    @torch.no_grad()
    def ordered_log_prob(
        self, x_1: torch.Tensor, steps: int | None = None, order: str = "entropy", batch_size: int = 1024
    ) -> torch.Tensor:
        """The exact log-probability of ``x_1`` (one per sequence, nats) under ordered
        unmasking (`sample` with this deterministic ``order`` and ``steps``, default
        ``length``; temperature 1, no filtering). Each step's positions are a function of
        the tokens already revealed, so replaying ``x_1``'s tokens yields every factor.
        On data it is a likelihood in nats (like an autoregressive model's); on the
        sampler's own draws, ``log q - log p_data`` averages to KL(q || p_data)."""
        self.validate_data(x_1)
        if order not in DETERMINISTIC_ORDERS:
            raise ValueError(f"order must be one of {DETERMINISTIC_ORDERS} (deterministic), got {order!r}")
        if self.path.source != "mask":
            raise ValueError(f"ordered_log_prob needs a mask source, got a {self.path.source} source")
        steps = self.length if steps is None else steps
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        args = (steps, 1.0, None, None, order, None)
        return torch.cat([self._unmask_in_order(len(chunk), *args, given=chunk)[1] for chunk in x_1.split(batch_size)])

    def _unmask_in_order(self, num, steps, temperature, top_k, top_p, order, generator, given=None):
        """Ordered unmasking: the sequences and the log-probability of their tokens; ``given``
        sequences are revealed instead of drawn."""
        device, mask = self._device(), self.path.mask_token
        x = self.path.sample_source((num, self.length), device, generator)
        log_q = torch.zeros(num, device=device)
        visible, beliefs = 0, None
        for k in range(steps):
            kappa = self.path.scheduler(torch.tensor((k + 1) / steps))[0].item()
            due = self.length if k == steps - 1 else min(self.length, round(self.length * kappa))
            if due <= visible:
                continue
            raw = self._call(x, torch.full((num,), k / steps, device=device), beliefs)
            log_p = _filter_logits(raw / temperature, top_k, top_p).log_softmax(-1)
            scores = _order_scores(log_p, order, generator).masked_fill(x != mask, -torch.inf)
            chosen = scores.topk(due - visible, -1).indices
            tokens = _gumbel_sample(log_p, generator) if given is None else given
            log_q += log_p.gather(-1, tokens[..., None]).squeeze(-1).gather(1, chosen).sum(1)
            x_read, visible = x, due
            x = x.scatter(1, chosen, tokens.gather(1, chosen))
            if self.self_condition:
                beliefs = self._beliefs(raw, x_read) * (x == mask)[..., None]
        return x, log_q

    def _sample(self, num, steps, temperature, top_k, top_p, corrector, generator) -> torch.Tensor:
        device = self._device()
        x = self.path.sample_source((num, self.length), device, generator)
        mask, beliefs = self.path.mask_token, None
        for k in range(steps):
            t = torch.full((num,), k / steps, device=device)
            h = 1.0 / steps
            beta = corrector * t[0] * (1 - t[0])
            p_jump = 1.0 if k == steps - 1 else (h * (1 + beta) * self.path.jump_rate(t[0])).clamp(max=1.0)
            raw, x_read = self._call(x, t, beliefs), x  # self-conditioning: the previous step's beliefs
            logits = _filter_logits(raw / temperature, top_k, top_p)
            proposal = _gumbel_sample(logits, generator)
            u = torch.rand(x.shape, generator=generator, device=device)
            move = u < p_jump
            if mask is not None:
                unmasked = x != mask
                move &= ~unmasked
                if corrector and k < steps - 1:
                    kappa, d_kappa = self.path.scheduler(t[0])
                    p_back = (h * beta * d_kappa / kappa.clamp(min=1e-12)).clamp(max=1.0)
                    x = torch.where(unmasked & (u < p_back), torch.full_like(x, mask), x)
            x = torch.where(move, proposal, x)
            if self.self_condition:  # kept where still masked, and read masked (not re-masked by the corrector)
                beliefs = (
                    self._beliefs(raw, x_read) * (x == mask)[..., None] if mask is not None else self._beliefs(raw, x)
                )
        return x
