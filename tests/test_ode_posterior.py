import pyro
import pytest
import torch

from pyroflows.infer.latent import LatentSpace
from pyroflows.posteriors import ode


def test_simulate_shapes_and_validation():
    data = ode.simulate(num_times=6, spacing=1.0, seed=1)
    assert data["times"].shape == (6,) and data["y"].shape == (6, 2)
    assert (data["y"] > 0).all()
    with pytest.raises(ValueError, match="multiple of"):
        ode.simulate(spacing=0.3)
    single = ode.simulate(seed=1, num_times=6, dtype=torch.float32)["y"]
    assert single.dtype == torch.float32 and torch.allclose(single.double(), data["y"])


def test_solve_matches_a_fine_reference_and_conserves_the_invariant():
    rates = torch.tensor([0.8, 0.04, 0.9, 0.03], dtype=torch.float64)
    initial = torch.tensor([30.0, 5.0], dtype=torch.float64)
    times = torch.arange(1.0, 11.0, dtype=torch.float64)
    path = ode.solve(rates, initial, times)
    # Lotka-Volterra conserves V = delta u - gamma log u + beta v - alpha log v along exact solutions
    alpha, beta, gamma, delta = rates
    u, v = path.unbind(-1)
    invariant = delta * u - gamma * u.log() + beta * v - alpha * v.log()
    start = delta * 30 - gamma * torch.tensor(30.0).log() + beta * 5 - alpha * torch.tensor(5.0).log()
    assert (invariant - start).abs().max() < 1e-2 * start.abs()


def test_model_vectorises_and_stays_finite_on_prior_draws():
    data = ode.simulate()
    space = LatentSpace(ode.lotka_volterra, data["times"], data["y"])
    assert space.dim == len(ode.PARAMETERS)
    torch.manual_seed(0)
    loc = torch.tensor([p[0] for p in ode.PRIORS.values()], dtype=torch.float64)
    scale = torch.tensor([p[1] for p in ode.PRIORS.values()], dtype=torch.float64)
    z = loc + 2 * scale * torch.randn(256, 7, dtype=torch.float64)  # wider than the prior
    with torch.no_grad():
        log_density = space.log_density(z, data["times"], data["y"])
    assert log_density.shape == (256,) and torch.isfinite(log_density).all()
    single = space.log_density(z[3], data["times"], data["y"])
    assert torch.allclose(single, log_density[3])


def test_map_search_has_local_optima():
    data = ode.simulate()
    args = (data["times"], data["y"])
    space = LatentSpace(ode.lotka_volterra, *args)

    def optimum(start):
        z = start.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([z], max_iter=300, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -space.log_density(z, *args)
            loss.backward()
            return loss

        with pyro.validation_enabled(False):
            opt.step(closure)
            return closure().item()

    truth = torch.tensor([ode.TRUTH[n] for n in ode.PARAMETERS], dtype=torch.float64).log()
    wrong_cycle = torch.tensor([0.82, 0.05, 2.5, 0.1, 100.0, 17.0, 0.75], dtype=torch.float64).log()
    assert optimum(wrong_cycle) > optimum(truth) + 20  # a separate optimum, far worse in log density


def test_warm_start_escapes_the_local_optimum_the_prior_mean_leads_to():
    from pyroflows.infer.warm_start import gaussian_warm_start

    data = ode.simulate()
    args = (data["times"], data["y"])
    space = LatentSpace(ode.lotka_volterra, *args)
    best, candidates = gaussian_warm_start(space, ode.lotka_volterra, args, {})
    with torch.no_grad():
        density = {c.name: space.log_density(c.loc, *args).item() for c in candidates}
    truth = torch.tensor([ode.TRUTH[n] for n in ode.PARAMETERS], dtype=torch.float64).log()
    assert density["Laplace from the prior mean"] < max(density.values()) - 20  # the trap is real
    assert best.name.startswith("Laplace") and density[best.name] == max(density.values())
    assert (best.loc - truth).abs().max() < 0.3  # the global mode, near the data-generating values
