"""The nine suite models agree with their reference draws.

Stein's identity: under the posterior, the score of the unconstrained log
density has mean zero, and (z - E z) times the score has mean -1. A wrong
likelihood, prior, constraint or Jacobian moves either by many standard
errors at the reference draws.
"""

import numpy as np
import pytest
import torch

from pyroflows import posteriors
from pyroflows.infer import LatentSpace


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("name", posteriors.NAMES)
def test_reference_draws_satisfy_stein_identity(name, float64):
    post = posteriors.load(name, dtype=torch.float64)
    space = LatentSpace(post.model, *post.args, **post.kwargs)
    num = 10000
    z = space.pack(post.reference_latents(num), (num,))
    scores = []
    for chunk in z.split(1000):  # bounded memory (diamonds has 5000 observations)
        chunk = chunk.clone().requires_grad_(True)
        log_p = space.log_density(chunk, *post.args, **post.kwargs)
        assert torch.isfinite(log_p).all()
        scores.append(torch.autograd.grad(log_p.sum(), chunk)[0])
    score = torch.cat(scores)
    z_scores = score.mean(0) / (score.std(0) / num**0.5)
    assert z_scores.abs().max() < 5, z_scores
    # second order, sensitive to the spread: E[(z - E z) d/dz log p] = -1 per coordinate
    moment = (z - z.mean(0)) * score
    t = (moment.mean(0) + 1) / (moment.std(0) / num**0.5)
    assert t.abs().max() < 5, t


@pytest.mark.parametrize("name", posteriors.NAMES)
def test_models_vectorise_over_draws(name):
    post = posteriors.load(name)
    space = LatentSpace(post.model, *post.args, **post.kwargs)
    z = space.init + 0.01 * torch.randn(4, space.dim)
    batched = space.log_density(z, *post.args, **post.kwargs)
    single = torch.stack([space.log_density(v, *post.args, **post.kwargs) for v in z])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-3)


def test_load_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown posterior 'nope'"):
        posteriors.load("nope")


def test_flatten_draws_names_stan_style():
    flat = posteriors.flatten_draws({"a": torch.zeros(5), "b": torch.arange(10.0).reshape(5, 2)})
    assert sorted(flat) == ["a", "b[1]", "b[2]"]
    np.testing.assert_array_equal(flat["b[2]"], [1, 3, 5, 7, 9])
