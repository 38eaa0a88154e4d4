"""Networks on token sequences and the autoregressive baseline (pair tables included)."""

import itertools

import pytest
import torch
from torch import nn

from pyroflows.discrete import AutoregressiveModel, train_discrete
from pyroflows.nn.tokens import ConvNet8, SequenceTransformer


@pytest.mark.parametrize("pairs", [(), ((-1, 0), (-2, -1), (-2, 0))])
def test_autoregressive_model_is_normalised_and_causal(pairs):
    torch.manual_seed(0)
    model = AutoregressiveModel(3, length=4, dim=16, depth=1, heads=2, pairs=pairs)
    for table in model.net.pair_logits:  # zero at initialisation: give them something to leak
        nn.init.normal_(table.weight)
    every = torch.tensor(list(itertools.product(range(3), repeat=4)))
    assert torch.allclose(model.log_prob(every).exp().sum(), torch.tensor(1.0), atol=1e-5)
    x = every[:1].clone()
    logits = model.net(x)
    x[0, 3] = (x[0, 3] + 1) % 3
    assert torch.allclose(model.net(x)[0, :3], logits[0, :3], atol=1e-6)  # earlier positions unchanged
    assert model.sample(5).shape == (5, 4)
    losses = train_discrete(model, every[every[:, 0] == 0], 50, lr=1e-2, loss="nll", seed=0, progress=False)
    assert losses[-1] < losses[0]


def test_networks_shapes():
    net = ConvNet8(18, 17, embed_dim=8, width=8)
    assert net(torch.zeros(2, 64, dtype=torch.long), torch.rand(2)).shape == (2, 64, 17)
    seq = SequenceTransformer(5, 7, 4, dim=16, depth=1, heads=2)
    assert seq(torch.zeros(3, 7, dtype=torch.long), torch.tensor(0.5)).shape == (3, 7, 4)
    with pytest.raises(ValueError, match="reads a time"):
        seq(torch.zeros(3, 7, dtype=torch.long))


def test_pair_embeddings_read_the_named_neighbours_and_pad_the_ends():
    torch.manual_seed(0)
    net = SequenceTransformer(4, 6, 3, dim=8, depth=1, heads=2, time=False, pairs=((-1, 1),))
    nn.init.zeros_(net.out.weight)  # leave the direct pair logits alone on the output
    nn.init.zeros_(net.out.bias)
    nn.init.normal_(net.pair_logits[0].weight)
    x = torch.tensor([[0, 1, 2, 3, 0, 1]])
    y = x.clone()
    y[0, 3] = 1
    changed = (net(x) - net(y)).abs().sum(-1)[0].nonzero().flatten().tolist()
    assert changed == [2, 4]  # the positions whose pair (i - 1, i + 1) holds position 3
    pad = 4
    table = net.pair_logit_scale * net.pair_logits[0].weight
    assert torch.allclose(net(x)[0, 0], table[pad * 5 + 1])  # (off the start, x[1])
    assert torch.allclose(net(x)[0, 5], table[0 * 5 + pad])  # (x[4], off the end)
    with pytest.raises(ValueError, match="offset"):
        SequenceTransformer(4, 6, pairs=((-1, 6),))
    with pytest.raises(ValueError, match="<= 0"):
        AutoregressiveModel(3, length=4, pairs=((-1, 1),))
