"""Multi-scale image flows, dequantisation, the training loop, DDP and loaders."""

from __future__ import annotations

import gzip
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from pyroflows.images import ImageFlow, VariationalDequantization, glow, realnvp_image, resflow_image
from pyroflows.images.data import load_cifar10, load_digits_images, load_mnist
from pyroflows.images.train import save_image_grid, train_images
from pyroflows.training import NonFiniteLossError, warmup_polynomial
from pyroflows.transforms import GlowStep, ImageCoupling, LogDetEstimator, Logit, Unsqueeze

from .ddp_worker import one_step_gradients, tiny_data, tiny_model


def _perturbed(flow, scale=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    flow = flow.double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


@pytest.mark.parametrize(
    "build",
    [
        lambda: glow((1, 8, 8), num_scales=2, steps_per_scale=2, hidden_channels=8, seed=0),
        lambda: glow((3, 4, 4), num_scales=2, steps_per_scale=1, hidden_channels=8, transform="additive"),
        lambda: realnvp_image((1, 8, 8), num_scales=2, hidden_channels=8, num_blocks=1),
        lambda: resflow_image((1, 4, 4), 2, 1, 8, log_det=LogDetEstimator("exact")),
    ],
    ids=["glow", "glow_additive_rgb", "realnvp", "resflow_exact"],
)
def test_multiscale_log_prob_is_the_change_of_variables(build):
    torch.manual_seed(0)
    flow = build()
    shape = flow.input_shape
    x = torch.rand(6, *shape, dtype=torch.float64)
    flow = flow.double()
    flow.log_prob(x)  # ActNorm initialises on a batch
    flow = _perturbed(flow)
    x0 = x[:1]

    def latents(v):
        return torch.cat([z.flatten() for z in flow.encode(v.reshape(1, *shape))[0]])

    jac = torch.autograd.functional.jacobian(latents, x0.flatten())
    z = latents(x0.flatten())
    # priors: evaluate through log_prob minus the log-det reported by encode
    _, log_det = flow.encode(x0)
    assert torch.allclose(log_det, torch.linalg.slogdet(jac)[1], atol=1e-8)
    assert z.numel() == x0.numel()
    latents_list, _ = flow.encode(x)
    assert torch.allclose(flow.decode(latents_list), x, atol=1e-10)


def test_split_priors_are_normalised_gaussians():
    """log_prob = log-det + top prior + split priors evaluated by hand."""
    flow = _perturbed(glow((1, 8, 8), num_scales=2, steps_per_scale=1, hidden_channels=4, seed=1))
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    latents, log_det = flow.encode(x)
    kept = flow.encode(x)[0][-1]
    # the split prior of level 0 conditions on the kept half, which is level 1's input
    h = x
    for layer in reversed(list(flow.levels[0])):
        h, _ = layer._inverse_and_log_det(h, None)
    kept = h[:, :2]
    mean, log_std = flow.splits[0].conv(kept).chunk(2, 1)
    split = dist.Normal(mean, log_std.exp()).log_prob(latents[0]).flatten(1).sum(1)
    top = dist.Normal(flow.top.mean, flow.top.log_std.exp()).log_prob(latents[1]).flatten(1).sum(1)
    assert torch.allclose(flow.log_prob(x), log_det + split + top, atol=1e-10)


def test_sampling_temperature_and_shapes():
    torch.manual_seed(0)
    flow = glow((1, 8, 8), num_scales=2, steps_per_scale=2, hidden_channels=8)
    flow.log_prob(torch.rand(16, 1, 8, 8))
    cold, warm = flow.sample(400, temperature=0.2), flow.sample(400, temperature=1.0)
    assert cold.shape == (400, 1, 8, 8)
    assert cold.std() < 0.5 * warm.std()
    with pytest.raises(ValueError, match="temperature must be positive"):
        flow.sample(2, temperature=0.0)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 1, 8, 8\), got shape \(2, 1, 8, 4\)"):
        flow.log_prob(torch.rand(2, 1, 8, 4))


def test_builders_reject_bad_shapes():
    with pytest.raises(ValueError, match="must divide by 4"):
        glow((1, 6, 6), num_scales=2)
    with pytest.raises(ValueError, match="a channel mask needs at least 2 channels"):
        ImageCoupling((1, 4, 4), mask="channel")
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        realnvp_image((8, 8))


def test_single_scale_layers_work_in_pyro_transformed_distribution():
    torch.manual_seed(0)
    step = GlowStep((4, 2, 2), hidden_channels=8)
    unsqueeze = Unsqueeze((4, 2, 2))
    base = dist.Normal(torch.zeros(4, 2, 2), 1.0).to_event(3)
    d = dist.TransformedDistribution(base, [step, unsqueeze])
    x = torch.randn(5, 1, 4, 4)
    z, log_det = step.inverse_and_log_det(unsqueeze.inv(x))
    assert torch.allclose(d.log_prob(x), base.log_prob(z) - log_det, atol=1e-5)
    assert d.sample((3,)).shape == (3, 1, 4, 4)


def test_image_flow_bits_per_dim_is_the_bound_computed_by_hand():
    torch.manual_seed(0)
    model = ImageFlow(glow((1, 4, 4), 1, 2, 8), num_levels=5, preprocess="logit", alpha=0.05).double()
    x = torch.randint(0, 5, (7, 1, 4, 4))
    noise = model.draw_noise(7)
    u = (x.double() + noise) / 5
    logit = Logit((1, 4, 4), 0.05)
    z, log_det = logit.inverse_and_log_det(u)
    expected = model.flow.log_prob(z) - log_det - 16 * math.log(5)
    assert torch.allclose(model.log_prob(x, noise), expected, atol=1e-10)
    assert torch.allclose(model(x, noise), -expected / (16 * math.log(2)))
    assert model.sample(3).dtype == torch.int64 and model.sample(3).max() < 5


def test_probabilities_of_all_images_sum_to_at_most_one():
    """Sum over every 2x2 image with 3 levels of the (Monte Carlo) dequantised
    probability: the mass of the flow's density inside the unit box, <= 1.
    A missing log-det or log K term would put it far above 1."""
    torch.manual_seed(0)
    model = ImageFlow(glow((1, 2, 2), 1, 2, 8), num_levels=3, preprocess="logit").double()
    model.flow = _perturbed(model.flow, 0.1)
    grid = torch.cartesian_prod(*[torch.arange(3)] * 4).reshape(-1, 1, 2, 2)
    with torch.no_grad():
        probs = torch.stack([model.log_prob(grid).exp() for _ in range(400)])  # (draws, 81)
    total = probs.mean(0).sum()
    se = probs.sum(1).std() / math.sqrt(probs.shape[0])
    assert 0.2 < total < 1 + 3 * se


def test_variational_dequantisation_log_q_is_its_density():
    torch.manual_seed(0)
    deq = VariationalDequantization((1, 4, 4), num_levels=5, num_steps=2, hidden_channels=8).double()
    with torch.no_grad():
        for p in deq.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randint(0, 5, (1, 1, 4, 4)).double()
    eps = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    v, log_q = deq(x, eps)
    jac = torch.autograd.functional.jacobian(lambda e: deq(x, e.reshape(1, 1, 4, 4))[0].flatten(), eps.flatten())
    expected = dist.Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(jac)[1]
    assert torch.allclose(log_q, expected.reshape(1), atol=1e-8)
    assert ((v > 0) & (v < 1)).all()


def test_image_flow_rejects_bad_pixels():
    model = ImageFlow(glow((1, 4, 4), 1, 1, 4), num_levels=5)
    with pytest.raises(ValueError, match=r"pixels must be in \[0, 4\], got values in \[0, 5\]"):
        model.log_prob(torch.tensor([0, 5] * 8).reshape(1, 1, 4, 4))
    with pytest.raises(ValueError, match="non-integer"):
        model.log_prob(torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match=r"expected pixels of shape \(N, 1, 4, 4\)"):
        model.log_prob(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="dequantization must be"):
        ImageFlow(glow((1, 4, 4), 1, 1, 4), num_levels=5, dequantization="gaussian")


def test_polynomial_schedule_warms_up_then_decays_to_zero():
    assert warmup_polynomial(0, 100, 10) == pytest.approx(0.1)
    assert warmup_polynomial(9, 100, 10) == pytest.approx(1.0)
    assert warmup_polynomial(55, 100, 10) == pytest.approx(0.5)
    assert warmup_polynomial(100, 100, 10, power=2.0) == 0.0


def _digits_model(dequantization="uniform"):
    torch.manual_seed(0)
    return ImageFlow(glow((1, 8, 8), 2, 2, 16, seed=0), num_levels=17, dequantization=dequantization)


def test_training_lowers_test_bits_per_dim_and_records_monitoring(tmp_path):
    train_data, test_data = load_digits_images("train").images[:512], load_digits_images("test").images[:128]
    model = _digits_model()
    grid = tmp_path / "samples.png"
    history = train_images(
        model, train_data, epochs=1, batch_size=64, warmup_steps=5, test_data=test_data, progress=False
    )
    before = history.test_bpd[0]
    history = train_images(
        _digits_model(),
        train_data,
        epochs=10,
        batch_size=64,
        lr=2e-3,
        warmup_steps=5,
        test_data=test_data,
        eval_every=5,
        samples=grid,
        progress=False,
    )
    assert history.test_bpd[-1] < before - 0.3
    assert len(history.train_bpd) == 10 * 8 and history.eval_epochs == [5, 10]
    assert history.reconstruction_error[-1] < 1e-4
    assert any("GlowStep" in name for name in history.layer_log_dets[-1])
    assert history.lr[0] < history.lr[4] and history.lr[-1] < history.lr[4]
    assert grid.exists()


def test_checkpoints_resume_exactly(tmp_path):
    data = load_digits_images("train").images[:256]
    straight = _digits_model("variational")
    train_images(straight, data, epochs=3, batch_size=64, warmup_steps=3, progress=False)
    path = tmp_path / "run.pt"
    first = _digits_model("variational")
    stopped = train_images(
        first,
        data,
        epochs=3,
        batch_size=64,
        warmup_steps=3,
        checkpoint=path,
        progress=False,
        callback=lambda e, h: e == 1,
    )
    assert len(stopped.train_bpd) == 4
    torch.manual_seed(123)  # the global RNG must not matter
    resumed = _digits_model("variational")
    history = train_images(resumed, data, epochs=3, batch_size=64, warmup_steps=3, checkpoint=path, progress=False)
    assert len(history.train_bpd) == 3 * 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not a checkpoint"])
def test_a_damaged_checkpoint_is_named_not_unpickled_into_a_traceback(tmp_path, damage):
    data = load_digits_images("train").images[:64]
    path = tmp_path / "run.pt"
    train_images(
        _digits_model("variational"), data, epochs=1, batch_size=64, warmup_steps=1, checkpoint=path, progress=False
    )
    content = path.read_bytes()
    damaged = {
        "truncated": content[: len(content) // 2],
        "garbage": b"not a torch file at all",
        "empty": b"",
    }
    if damage == "not a checkpoint":
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(damaged[damage])
    with pytest.raises(ValueError, match="corrupted or incomplete"):
        train_images(_digits_model("variational"), data, epochs=2, batch_size=64, checkpoint=path, progress=False)


def test_non_finite_loss_is_reported():
    model = _digits_model()
    with torch.no_grad():
        model.flow.top.log_std.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="bits/dim is nan"):
        train_images(model, load_digits_images("train").images[:128], epochs=1, progress=False)


def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path):
    out = tmp_path / "ddp.pt"
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    result = subprocess.run([*cmd, str(worker), str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(out)
    assert ddp["world"] == 2
    # a NaN loss on one rank stops both with NonFiniteLossError at the same step (the other rank hung before)
    assert all("non-finite bits/dim" in e and "at step 2" in e for e in ddp["nan_errors"]), ddp["nan_errors"]
    grads = one_step_gradients(tiny_model(), tiny_data(), 0, 1)
    for name, g in grads.items():
        assert torch.allclose(ddp["grads"][name], g, rtol=1e-4, atol=1e-6), name
    single = tiny_model()
    train_images(single, tiny_data(), epochs=2, batch_size=8, warmup_steps=2, progress=False)
    # Adam divides by the gradient's scale, so float32 rounding in the all-reduce
    # can move a parameter by up to lr per step where its gradient is near zero
    for (name, a), b in zip(single.state_dict().items(), ddp["state"].values(), strict=True):
        assert torch.allclose(a, b, atol=8 * 1e-3 / 4), name


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("fashion", [False, True])
def test_mnist_loader_reads_torchvision_files(tmp_path, fashion):
    folder = tmp_path / ("FashionMNIST" if fashion else "MNIST") / "raw"
    folder.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    _write_idx(folder / "t10k-images-idx3-ubyte", images, compress=fashion)
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(5), compress=fashion)
    data = load_mnist(tmp_path, "test", fashion=fashion)
    assert data.images.shape == (5, 1, 28, 28) and data.num_levels == 256
    assert torch.equal(data.images[:, 0], torch.as_tensor(images))
    assert data.labels.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_mnist(tmp_path, "train", fashion=fashion)
    (folder / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0c\x01junk")
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        load_mnist(tmp_path, "train", fashion=fashion)


def test_cifar10_loader_reads_torchvision_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 3 * 32 * 32)).astype(np.uint8)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": pixels, "labels": [3, 1, 4, 1]}, f)
    data = load_cifar10(tmp_path, "test")
    assert data.images.shape == (4, 3, 32, 32)
    assert torch.equal(data.images.reshape(4, -1), torch.as_tensor(pixels.astype(np.int64)))
    assert data.labels.tolist() == [3, 1, 4, 1]


def test_digits_split_and_image_grid(tmp_path):
    train_data, test_data = load_digits_images("train"), load_digits_images("test")
    assert len(train_data.images) + len(test_data.images) == 1797
    assert train_data.images.max() == 16 and train_data.num_levels == 17
    path = tmp_path / "grid.png"
    save_image_grid(test_data.images[:10], path, 17, nrow=5, scale=3)
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (3 * (2 * 9 + 1), 3 * (5 * 9 + 1))


def test_multiscale_flow_as_a_pyro_distribution():
    import pyro

    torch.manual_seed(0)
    flow = glow((1, 4, 4), num_scales=1, steps_per_scale=2, hidden_channels=8)
    flow.log_prob(torch.rand(8, 1, 4, 4))
    d = flow.distribution()
    x = torch.rand(2, 3, 1, 4, 4)
    assert torch.allclose(d.log_prob(x), flow.log_prob(x.reshape(6, 1, 4, 4)).reshape(2, 3))
    draws = d.rsample((5,))
    assert draws.shape == (5, 1, 4, 4) and draws.requires_grad
    draws.square().sum().backward()
    assert flow.top.log_std.grad is not None

    def model(data):
        with pyro.plate("images", len(data)):
            pyro.sample("x", flow.distribution(), obs=data)

    trace = pyro.poutine.trace(model).get_trace(x[0])
    assert torch.allclose(trace.log_prob_sum(), flow.log_prob(x[0]).sum())


def test_image_flow_save_load_round_trip(tmp_path):
    import io

    model = _digits_model("variational")
    x = load_digits_images("test").images[:16]
    noise = model.draw_noise(16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.log_prob(x, noise)  # initialises ActNorm
        expected = model.log_prob(x, noise)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = _digits_model("variational")
    fresh.load_state_dict(torch.load(buffer))
    with torch.no_grad():
        assert torch.equal(fresh.log_prob(x[8:], noise[8:]), model.log_prob(x[8:], noise[8:]))  # no re-init
    torch.save(model, tmp_path / "model.pt")
    whole = torch.load(tmp_path / "model.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(whole.log_prob(x, noise), expected)
