"""The torch net against the course's equations (models.reference, NumPy, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models import reference
from models.config import MLPConfig
from models.net import MLP, loss_fn

M, UNITS = 16, 5  # mini-batch rows, BN units


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _bn(units: int = UNITS, rng: np.random.Generator | None = None) -> nn.BatchNorm1d:
    """A float64 BatchNorm1d in training mode with random gamma and beta."""
    bn = nn.BatchNorm1d(units).double().train()
    if rng is not None:
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, units)))
            bn.bias.copy_(torch.from_numpy(rng.normal(size=units)))
    return bn


def _mlp_bn(config: MLPConfig, n_features: int = 4) -> tuple[MLP, nn.BatchNorm1d]:
    torch.manual_seed(0)
    net = MLP(n_features, 3, config).double()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm1d)]
    return net, bns[0]


# --- batch norm, training mode ----------------------------------------------------------------

def test_bn_forward_matches_reference(rng):
    bn = _bn(rng=rng)
    z = rng.normal(3.0, 2.0, size=(M, UNITS))
    out = bn(torch.from_numpy(z)).detach().numpy()
    expected, _ = reference.bn_forward(z, bn.weight.detach().numpy(), bn.bias.detach().numpy(),
                                       eps=bn.eps)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


def test_bn_backward_matches_reference(rng):
    bn = _bn(rng=rng)
    z_np = rng.normal(-1.0, 3.0, size=(M, UNITS))
    d_out = rng.normal(size=(M, UNITS))  # a random upstream gradient dL/dz_tilde
    z = torch.from_numpy(z_np).requires_grad_(True)
    bn(z).backward(torch.from_numpy(d_out))

    _, cache = reference.bn_forward(z_np, bn.weight.detach().numpy(), bn.bias.detach().numpy(),
                                    eps=bn.eps)
    dz, dgamma, dbeta = reference.bn_backward(d_out, cache)
    np.testing.assert_allclose(z.grad.numpy(), dz, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(bn.weight.grad.numpy(), dgamma, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.bias.grad.numpy(), dbeta, rtol=1e-10, atol=1e-12)


def test_bn_backward_reference_matches_finite_differences(rng):
    # The reference itself, against the definition of a derivative: no torch involved.
    gamma, beta = rng.uniform(0.5, 2.0, 3), rng.normal(size=3)
    z = rng.normal(size=(6, 3))
    d_out = rng.normal(size=(6, 3))

    def loss(zz):
        return float((reference.bn_forward(zz, gamma, beta)[0] * d_out).sum())

    dz, _, _ = reference.bn_backward(d_out, reference.bn_forward(z, gamma, beta)[1])
    h = 1e-6
    numeric = np.zeros_like(z)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            e = np.zeros_like(z)
            e[i, j] = h
            numeric[i, j] = (loss(z + e) - loss(z - e)) / (2 * h)
    np.testing.assert_allclose(dz, numeric, rtol=1e-5, atol=1e-7)


def test_bn_normalises_each_unit_over_the_batch(rng):
    # Units on wildly different scales: each column ends with mean 0 and variance 1
    # (before gamma and beta, i.e. with gamma=1, beta=0 as BN starts).
    bn = _bn()
    scales = np.array([1e-3, 1.0, 10.0, 1e3, 5.0])
    z = rng.normal(size=(64, UNITS)) * scales + np.array([100.0, -3.0, 0.0, 7.0, 1e4])
    out = bn(torch.from_numpy(z)).detach().numpy()
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-9)
    # eps=1e-5 in the denominator: exactly 1 only where var >> eps.
    np.testing.assert_allclose(out.var(axis=0)[1:], 1.0, rtol=1e-4)
    tiny = z[:, 0].var()  # ~1e-6, close to eps: the normalised variance is var / (var + eps)
    assert out.var(axis=0)[0] == pytest.approx(tiny / (tiny + bn.eps), rel=1e-6)


def test_bn_gamma_and_beta_set_each_units_scale_and_shift(rng):
    bn = _bn(rng=rng)
    z = rng.normal(size=(256, UNITS)) * 50 + 20
    out = bn(torch.from_numpy(z)).detach().numpy()
    np.testing.assert_allclose(out.mean(axis=0), bn.bias.detach().numpy(), atol=1e-9)
    np.testing.assert_allclose(out.std(axis=0), bn.weight.detach().numpy(), rtol=1e-4)


# --- running averages and eval mode -----------------------------------------------------------

@pytest.mark.parametrize("bn_momentum", [0.9, 0.99, 0.5])
def test_mlp_running_averages_follow_the_course_beta(rng, bn_momentum):
    # MLPConfig.bn_momentum is the course's beta (the old value's weight); the MLP must
    # turn it into torch's momentum = 1 - beta.
    config = MLPConfig(hidden_units=UNITS, layers=1, bn_momentum=bn_momentum)
    net, bn = _mlp_bn(config)
    net.train()
    running_mean = np.zeros(UNITS)
    running_var = np.ones(UNITS)
    with torch.no_grad():
        for step in range(5):
            z = rng.normal(step, 1.0 + step, size=(M, UNITS))
            bn(torch.from_numpy(z))
            running_mean, running_var = reference.bn_running_update(
                running_mean, running_var, z, beta_avg=bn_momentum)
    np.testing.assert_allclose(bn.running_mean.numpy(), running_mean, rtol=1e-10)
    np.testing.assert_allclose(bn.running_var.numpy(), running_var, rtol=1e-10)
    assert int(bn.num_batches_tracked) == 5


def test_mlp_running_averages_through_the_whole_net(rng):
    # Driving the full MLP (not the BN alone): BN sees the Linear's output.
    config = MLPConfig(hidden_units=UNITS, layers=1)
    net, bn = _mlp_bn(config, n_features=4)
    linear = net.hidden[0]
    running_mean, running_var = np.zeros(UNITS), np.ones(UNITS)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            x = torch.from_numpy(rng.normal(size=(M, 4)))
            net(x)
            z = linear(x).numpy()
            running_mean, running_var = reference.bn_running_update(
                running_mean, running_var, z, beta_avg=config.bn_momentum)
    np.testing.assert_allclose(bn.running_mean.numpy(), running_mean, rtol=1e-10)
    np.testing.assert_allclose(bn.running_var.numpy(), running_var, rtol=1e-10)


def test_mlp_bn_eval_uses_running_statistics(rng):
    config = MLPConfig(hidden_units=UNITS, layers=1)
    net, bn = _mlp_bn(config)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, UNITS)))
        bn.bias.copy_(torch.from_numpy(rng.normal(size=UNITS)))
        net.train()
        for _ in range(4):
            bn(torch.from_numpy(rng.normal(2.0, 3.0, size=(M, UNITS))))
        net.eval()
        z = rng.normal(size=(M, UNITS))
        out = bn(torch.from_numpy(z)).numpy()
        expected = reference.bn_eval(z, bn.weight.numpy(), bn.bias.numpy(),
                                     bn.running_mean.numpy(), bn.running_var.numpy(), eps=bn.eps)
        np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
        # Not the batch's statistics: a training-mode forward would give something else.
        batch_stats, _ = reference.bn_forward(z, bn.weight.numpy(), bn.bias.numpy(), eps=bn.eps)
        assert not np.allclose(out, batch_stats, atol=1e-3)


def test_mlp_eval_on_one_row_equals_that_row_inside_a_batch(rng):
    net, _ = _mlp_bn(MLPConfig(hidden_units=8, layers=2), n_features=4)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.from_numpy(rng.normal(size=(M, 4))))
    net.eval()
    x = torch.from_numpy(rng.normal(size=(M, 4)))
    with torch.no_grad():
        batch = net(x)
        single = net(x[3:4])  # one row: training-mode BN could not normalise this
    torch.testing.assert_close(single, batch[3:4], rtol=1e-12, atol=1e-12)
    proba = net.predict_proba(x[3:4])
    torch.testing.assert_close(proba, torch.softmax(batch[3:4], dim=1))


def test_predict_proba_leaves_the_mode_alone(rng):
    net, bn = _mlp_bn(MLPConfig(hidden_units=UNITS, layers=1))
    net.train()
    before = bn.running_mean.clone()
    net.predict_proba(torch.from_numpy(rng.normal(size=(M, 4))))
    assert net.training
    assert torch.equal(bn.running_mean, before)  # eval mode: no running update


# --- where the bias goes ----------------------------------------------------------------------

def test_a_bias_before_batch_norm_gets_no_gradient(rng):
    torch.manual_seed(0)
    linear = nn.Linear(6, UNITS, bias=True).double()
    bn = _bn(rng=rng)
    head = nn.Linear(UNITS, 3).double()
    x = torch.from_numpy(rng.normal(size=(M, 6)))
    y = torch.from_numpy(rng.integers(0, 3, size=M))
    loss_fn(head(torch.relu(bn(linear(x)))), y).backward()
    assert linear.weight.grad.abs().max() > 1e-3  # the weights do learn
    torch.testing.assert_close(linear.bias.grad, torch.zeros(UNITS, dtype=torch.float64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("layers", [1, 3])
def test_batch_norm_net_has_no_hidden_biases(layers):
    net = MLP(10, 4, MLPConfig(hidden_units=7, layers=layers, batch_norm=True))
    linears = [m for m in net.hidden if isinstance(m, nn.Linear)]
    bns = [m for m in net.hidden if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == layers and len(bns) == layers
    assert all(lin.bias is None for lin in linears)
    assert all(bn.affine and bn.weight.shape == (7,) for bn in bns)  # gamma, beta per unit
    assert net.output.bias is not None  # the output layer keeps its bias: no BN after it
    assert net(torch.randn(5, 10)).shape == (5, 4)


@pytest.mark.parametrize("layers", [1, 3])
def test_plain_net_has_biases_and_no_batch_norm(layers):
    net = MLP(10, 4, MLPConfig(hidden_units=7, layers=layers, batch_norm=False))
    linears = [m for m in net.hidden if isinstance(m, nn.Linear)]
    assert len(linears) == layers
    assert all(lin.bias is not None for lin in linears)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in net.modules())


# --- softmax and cross-entropy ----------------------------------------------------------------

def test_loss_fn_matches_reference_cross_entropy(rng):
    logits = rng.normal(scale=3.0, size=(M, 4))
    y = rng.integers(0, 4, size=M)
    loss = loss_fn(torch.from_numpy(logits), torch.from_numpy(y))
    assert float(loss) == pytest.approx(reference.cross_entropy(logits, y), rel=1e-12)


def test_loss_gradient_is_y_hat_minus_y_over_m(rng):
    logits_np = rng.normal(scale=3.0, size=(M, 4))
    y = rng.integers(0, 4, size=M)
    logits = torch.from_numpy(logits_np).requires_grad_(True)
    loss_fn(logits, torch.from_numpy(y)).backward()
    expected = reference.cross_entropy_grad(logits_np, y)
    np.testing.assert_allclose(logits.grad.numpy(), expected, rtol=1e-10, atol=1e-14)
    # The course's dZ = y_hat - y, spelt out.
    onehot = np.eye(4)[y]
    np.testing.assert_allclose(expected * M, reference.softmax(logits_np) - onehot, atol=1e-14)


def test_reference_softmax_matches_torch(rng):
    logits = rng.normal(scale=5.0, size=(M, 6))
    np.testing.assert_allclose(reference.softmax(logits),
                               torch.softmax(torch.from_numpy(logits), dim=1).numpy(),
                               rtol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 0.0], [-1e4, -1e4, 1e4]])
    y = np.array([0, 2, 1])  # one right, two wrong by a mile
    loss = loss_fn(torch.from_numpy(logits), torch.from_numpy(y))
    ref = reference.cross_entropy(logits, y)
    assert np.isfinite(float(loss)) and np.isfinite(ref)
    assert float(loss) == pytest.approx(ref, rel=1e-9)
    assert float(loss) == pytest.approx((0.0 + 1e4 + 2e4) / 3, rel=1e-9)
    logits_t = torch.from_numpy(logits).requires_grad_(True)
    loss_fn(logits_t, torch.from_numpy(y)).backward()
    assert torch.isfinite(logits_t.grad).all()
    np.testing.assert_allclose(logits_t.grad.numpy(), reference.cross_entropy_grad(logits, y),
                               atol=1e-12)
    assert np.isfinite(reference.softmax(logits)).all()
    # float32, as training runs: still finite.
    loss32 = loss_fn(torch.tensor(logits, dtype=torch.float32), torch.from_numpy(y))
    assert torch.isfinite(loss32)


def test_predict_proba_rows_sum_to_one(rng):
    net, _ = _mlp_bn(MLPConfig(hidden_units=8), n_features=4)
    x = torch.from_numpy(rng.normal(scale=100.0, size=(32, 4)))
    proba = net.predict_proba(x)
    assert proba.shape == (32, 3)
    assert (proba >= 0).all() and torch.isfinite(proba).all()
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(32, dtype=torch.float64))
