"""The gallery model of CMP-NAS (METHODS.md §1): a bottleneck ResNet embedding network with a classification head.

ResNet-101 in the paper [seed] (``blocks=[3, 4, 23, 3]``, ``width=64``); a CPU-sized preset in ``conf/gallery/``.
The embedding φg(x) is the penultimate feature: global-pooled ResNet features through a linear *neck* to
``embedding_dim`` (nasx's choice, so that the gallery's embedding matches the query supernet's, which BCT needs),
then the classifier W_g — the head BCT trains query models against.

Each bottleneck is conv1 (1×1) → conv2 (3×3, stride) → conv3 (1×1, 4× expansion), each followed by BN; the pruning of
supplementary Tab. 4 removes filters of conv1 and conv2 ("the first two layers of each residual block"), which
leaves every block's input and output width, and so the residual additions, unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, mid: int, stride: int, mid2: int | None = None):
        super().__init__()
        mid2 = mid if mid2 is None else mid2
        cout = mid * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid2, 3, stride, 1, bias=False), nn.BatchNorm2d(mid2)
        self.conv3, self.bn3 = nn.Conv2d(mid2, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetEmbedding(nn.Module):
    """``forward_features(x)`` → embedding (N, embedding_dim); ``forward(x)`` → logits over training classes."""

    def __init__(self, blocks: Sequence[int] = (3, 4, 23, 3), width: int = 64, embedding_dim: int = 1024,
                 num_classes: int = 1000, in_channels: int = 3, stem_stride: int = 2, stem_pool: bool = True):
        super().__init__()
        self.embedding_dim = embedding_dim
        stem = [nn.Conv2d(in_channels, width, 7 if stem_stride > 1 else 3, stem_stride,
                          3 if stem_stride > 1 else 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if stem_pool:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        layers, cin = [], width
        for stage, n in enumerate(blocks):
            mid = width * 2 ** stage
            for i in range(n):
                layers.append(Bottleneck(cin, mid, 2 if i == 0 and stage > 0 else 1))
                cin = mid * Bottleneck.expansion
        self.blocks = nn.ModuleList(layers)
        self.neck = nn.Sequential(nn.Linear(cin, embedding_dim, bias=False), nn.BatchNorm1d(embedding_dim))
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False)

    def forward_features(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.neck(x.mean((2, 3)))

    def forward(self, x):
        return self.classifier(self.forward_features(x))
