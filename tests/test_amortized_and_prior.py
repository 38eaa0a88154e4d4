import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import nn

from pyroflows.diagnostics import draw
from pyroflows.infer import AmortizedFlow, AutoFlow, FlowPrior, fit

N, D = 400, 2


@pytest.fixture(autouse=True)
def clean_param_store():
    pyro.clear_param_store()


def hierarchical(x, subsample_size=32):
    """mu ~ N(0, 5 I); z_i ~ N(mu, I); x_i ~ N(z_i, 0.5^2 I)."""
    mu = pyro.sample("mu", dist.Normal(torch.zeros(D), 5.0).to_event(1))
    with pyro.plate("data", N, subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=x[idx])


def test_amortized_flow_with_autoflow_for_globals_recovers_local_posteriors():
    pyro.set_rng_seed(0)
    gen = torch.Generator().manual_seed(0)
    mu_true = torch.tensor([2.0, -1.0])
    x = mu_true + torch.randn(N, D, generator=gen) + 0.5 * torch.randn(N, D, generator=gen)
    encoder = nn.Sequential(nn.Linear(D, 32), nn.Tanh())
    local = AmortizedFlow("z", D, ("data", N, 32), lambda x, **_: x, encoder, context_dim=32, hidden_dims=(32,))
    global_guide = AutoFlow(poutine.block(hierarchical, hide=["z"]), warm_start=None)

    def guide(x):
        global_guide(x)
        local(x)

    fit(hierarchical, guide, x, num_steps=600, lr=0.02, num_particles=2, progress=False, seed=0)
    mu_hat = draw(poutine.block(hierarchical, hide=["z"]), global_guide, x, num_samples=1000).samples["mu"].mean(0)
    assert (mu_hat - x.mean(0)).abs().max() < 0.2
    # exact conditional: z_i | x_i, mu ~ N((4 x_i + mu) / 5, 1/5)
    q = local.posterior(x[:50])
    samples = q.sample((2000,))
    exact_mean = (4 * x[:50] + mu_hat) / 5
    assert (samples.mean(0) - exact_mean).abs().max() < 0.15
    assert (samples.std(0) - 0.2**0.5).abs().max() < 0.08


def test_amortized_flow_checks_its_inputs():
    enc = nn.Identity()
    with pytest.raises(ValueError, match="latent_dim"):
        AmortizedFlow("z", 0, ("data", 10), lambda x: x, enc, context_dim=2)
    with pytest.raises(ValueError, match="plate"):
        AmortizedFlow("z", 2, "data", lambda x: x, enc, context_dim=2)
    guide = AmortizedFlow("z", 2, ("data", 10), lambda x: x, enc, context_dim=2, num_transforms=0)
    with pytest.raises(ValueError, match="10 rows"):
        guide(torch.zeros(7, 2))


class PriorModel(PyroModule):
    def __init__(self):
        super().__init__()
        self.prior = FlowPrior(2, num_transforms=2, hidden_dims=(32,))

    def forward(self, n):
        with pyro.plate("n", n):
            return pyro.sample("z", self.prior())


def test_flow_prior_learns_by_maximum_likelihood_in_a_model():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(1000, 2, generator=gen) * torch.tensor([0.5, 2.0]) + torch.tensor([1.0, -1.0])
    model = PriorModel()

    def observed(n):
        return poutine.condition(model, {"z": data})(n)

    fit(observed, lambda n: None, 1000, num_steps=300, lr=0.02, num_particles=1, progress=False, seed=0)
    with torch.no_grad():
        samples = model.prior().sample((20000,))
    torch.testing.assert_close(samples.mean(0), torch.tensor([1.0, -1.0]), atol=0.15, rtol=0)
    torch.testing.assert_close(samples.std(0), torch.tensor([0.5, 2.0]), atol=0.15, rtol=0.1)
    assert {n for n, _ in model.named_parameters()} and len(list(model.parameters())) > 4


def test_flow_prior_is_standard_normal_at_init_and_checks_dim():
    prior = FlowPrior(3)()
    z = torch.randn(5, 3)
    torch.testing.assert_close(prior.log_prob(z), dist.Normal(0.0, 1.0).log_prob(z).sum(-1))
    assert FlowPrior(1)().sample().shape == (1,)
    with pytest.raises(ValueError, match="dim"):
        FlowPrior(0)
