"""The course's net: hidden layers of Linear(bias=False) -> BatchNorm1d -> activation.

BN normalises each unit over the mini-batch in training (per-unit mean and
variance), then scales and shifts by its learnable gamma and beta, both of
shape (units,); at test time it uses the running, exponentially weighted mean
and variance instead. A bias before BN would be cancelled by the mean
subtraction (its gradient is zero), so the Linear has none: BN's beta does its
job. The output layer gives C logits; softmax turns them into probabilities.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import MLPConfig

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


class MLP(nn.Module):
    """A batch-norm (or plain) multilayer perceptron giving logits (batch, classes)."""

    def __init__(self, n_features: int, n_classes: int, config: MLPConfig | None = None):
        super().__init__()
        config = config or MLPConfig()
        self.config = config
        blocks: list[nn.Module] = []
        width = n_features
        for _ in range(config.layers):
            if config.batch_norm:
                blocks += [
                    nn.Linear(width, config.hidden_units, bias=False),  # (batch, units)
                    # torch's momentum weighs the *new* batch statistic: 1 - the course's beta.
                    nn.BatchNorm1d(config.hidden_units, momentum=1.0 - config.bn_momentum),
                ]
            else:
                blocks.append(nn.Linear(width, config.hidden_units))
            blocks.append(_ACTIVATIONS[config.activation]())
            width = config.hidden_units
        self.hidden = nn.Sequential(*blocks)
        self.output = nn.Linear(width, n_classes)  # logits (batch, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.hidden(x))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (batch, classes), in eval mode (BN's running statistics)."""
        was_training = self.training
        self.eval()
        try:
            return torch.softmax(self(x), dim=1)
        finally:
            self.train(was_training)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy computed from logits (log-sum-exp: no overflow, no log 0).

    Its gradient with respect to the logits is (softmax(logits) - onehot) / batch:
    the course's dZ = y_hat - y, averaged over the mini-batch.
    """
    return nn.functional.cross_entropy(logits, targets)
