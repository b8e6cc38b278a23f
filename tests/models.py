"""Small test models, defined here so the suite needs no torchvision and no downloads."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Block(nn.Module):
    """conv-bn-relu x2 with a residual connection."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.skip(x))


class TinyResNet(nn.Module):
    """ResNet-like: stem, three stages, global average pooling, one linear layer."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.layer3 = Block(2 * width, 4 * width, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class FlattenHead(nn.Module):
    """A classifier whose head is flatten + linear (no global pooling): cam must refuse it."""

    def __init__(self, num_classes: int = 5, size: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(4 * (size // 2) ** 2, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).flatten(1))


class TwiceCalled(nn.Module):
    """Calls its activation module twice, like EfficientNet-Lite's ``_swish``."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, 2, 1)
        self.conv2 = nn.Conv2d(6, 12, 3, 2, 1)
        self.act = nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


def tiny_resnet(seed: int = 0, **kwargs) -> TinyResNet:
    """A TinyResNet with random but fixed weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = TinyResNet(**kwargs)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


class WithUnusedBranch(TinyResNet):
    """A TinyResNet with a module that forward never calls."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(num_classes)
        self.unused = nn.Conv2d(3, 3, 1)
