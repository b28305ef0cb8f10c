"""NumPy reference implementations the tests check the torch net against.

Written from the course's equations, column by column, with no torch: batch
norm's forward and backward passes (per-unit statistics over the mini-batch,
running averages for test time) and softmax with cross-entropy (dZ = y_hat - y).
Shapes are (m, units): m examples in the mini-batch, one column per unit.
"""

from __future__ import annotations

import numpy as np


def bn_forward(z, gamma, beta, eps=1e-5):
    """Batch norm in training mode.

    Returns:
        (z_tilde, cache): z_tilde = gamma * (z - mu) / sqrt(var + eps) + beta,
        with mu and var per unit over the mini-batch (var the biased 1/m one).
    """
    mu = z.mean(axis=0)  # (units,)
    var = z.var(axis=0)  # (units,), 1/m
    z_norm = (z - mu) / np.sqrt(var + eps)
    return gamma * z_norm + beta, (z_norm, var, gamma, eps)


def bn_backward(d_out, cache):
    """Gradients of batch norm: (dz, dgamma, dbeta) for an upstream gradient d_out."""
    z_norm, var, gamma, eps = cache
    m = d_out.shape[0]
    dbeta = d_out.sum(axis=0)
    dgamma = (d_out * z_norm).sum(axis=0)
    dz_norm = d_out * gamma
    dz = (m * dz_norm - dz_norm.sum(axis=0) - z_norm * (dz_norm * z_norm).sum(axis=0)) / (
        m * np.sqrt(var + eps)
    )
    return dz, dgamma, dbeta


def bn_running_update(running_mean, running_var, z, beta_avg):
    """One step of the exponentially weighted averages used at test time.

    running = beta_avg * running + (1 - beta_avg) * batch statistic; the
    variance kept for test time is the unbiased (1/(m-1)) one, as torch keeps.
    """
    m = z.shape[0]
    mu = z.mean(axis=0)
    var_unbiased = z.var(axis=0) * m / (m - 1)
    return (beta_avg * running_mean + (1 - beta_avg) * mu,
            beta_avg * running_var + (1 - beta_avg) * var_unbiased)


def bn_eval(z, gamma, beta, running_mean, running_var, eps=1e-5):
    """Batch norm at test time: the running statistics, not the batch's."""
    return gamma * (z - running_mean) / np.sqrt(running_var + eps) + beta


def softmax(logits):
    """Row-wise softmax, shifted by the row max so exp never overflows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits, y):
    """Mean of -log softmax(logits)[y] over the mini-batch; y holds class indices."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(y)), y].mean()


def cross_entropy_grad(logits, y):
    """dL/dZ of the mean cross-entropy: (y_hat - onehot(y)) / m."""
    m, c = logits.shape
    onehot = np.eye(c)[y]
    return (softmax(logits) - onehot) / m
