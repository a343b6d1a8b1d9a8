"""Space families: one file each, holding the space, its supernet and ``extract(arch)``.

Every supernet follows one protocol, so that training systems, loss terms (BCT) and evaluators work on any space:

* ``forward(x, arch)`` — logits of ``arch``'s path, (N, classes);
* ``forward_features(x, arch)`` — the embedding before the classifier, (N, D);
* ``classifier`` — the module mapping that embedding to logits (``forward = classifier ∘ forward_features``);
* ``extract(arch)`` — a static ``nn.Module`` with inherited weights, equal to the supernet on ``arch`` in eval mode,
  which has ``forward``, ``forward_features`` and ``classifier`` too.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class Supernet(Protocol):
    classifier: nn.Module

    def forward(self, x: Tensor, arch) -> Tensor: ...

    def forward_features(self, x: Tensor, arch) -> Tensor: ...

    def extract(self, arch) -> nn.Module: ...
