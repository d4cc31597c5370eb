"""The project's own zoo: small networks trained reproducibly on real bundled data.

Each :class:`ZooSpec` names an architecture, the family of reference patterns it stands for,
its task and dataset, and the training recipe that ``entropy_probe.patterns.zoo_train`` follows
(epochs, learning rate, batch size, snapshot points, held-out metric). The zoo supplies the
well-trained, partly trained and untrained checkpoints that reference patterns are built from
and that the comparison score is tested on. Nothing is downloaded: every member is trained from
scratch (no pretrained weights exist offline), on the datasets of :mod:`entropy_probe.datasets`.

==================  =================  ===========  =========  ==========================
name                family             task         dataset    architecture
==================  =================  ===========  =========  ==========================
mnist_cnn           classifier_cnn     classify     mnist5k    DefaultMnistCNN
mnist_timm          classifier_cnn     classify     mnist5k    timm regnetx_002
digits_mlp          classifier_mlp     classify     digits     64-128-64-10 MLP
mnist_dense_ae      dense_autoencoder  reconstruct  mnist5k    784-256-64-256-784
digits_dense_ae     dense_autoencoder  reconstruct  digits     64-48-16-48-64
mnist_conv_ae       conv_autoencoder   reconstruct  mnist5k    conv / ConvTranspose
nuclei_unet         encoder_decoder    segment      nuclei     SMP Unet, tu-resnet10t
==================  =================  ===========  =========  ==========================
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from torch import nn

from entropy_probe.errors import UnknownNameError

__all__ = ["ZOO", "ZooSpec", "get_spec", "list_members"]

Task = Literal["classify", "reconstruct", "segment"]
Direction = Literal["max", "min"]


@dataclass(frozen=True)
class ZooSpec:
    """One zoo member: architecture, data and the recipe that trains it.

    ``metric`` is measured on the held-out split after every epoch and at every snapshot;
    ``direction`` says whether larger (``"max"``) or smaller (``"min"``) is better.
    ``snapshot_epochs`` are points in epochs (fractions allowed: ``0.25`` is a quarter of the
    first epoch); 0 is the random initialisation, and the last epoch is always added.
    """

    name: str
    family: str
    task: Task
    dataset: str
    input_shape: tuple[int, ...]  # per sample, (C, H, W)
    builder: Callable[[], nn.Module]
    architecture: str  # human description
    epochs: int
    lr: float
    batch_size: int
    metric: str  # "accuracy" | "mse" | "dice"
    direction: Direction
    snapshot_epochs: tuple[float, ...]
    augment: str = "none"  # "shift2" | "dihedral" | "none"
    weight_decay: float = 1e-2  # AdamW, decoupled
    dataset_kwargs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    notes: str = ""

    def build(self) -> nn.Module:
        """The architecture with fresh random weights (in training mode)."""
        return self.builder()


# --------------------------------------------------------------------------------------------
# architectures


def _mnist_cnn() -> nn.Module:
    from entropy_probe.default_model import DefaultMnistCNN

    return DefaultMnistCNN()


def _mnist_timm() -> nn.Module:
    import timm

    model: nn.Module = timm.create_model(
        "regnetx_002", pretrained=False, in_chans=1, num_classes=10
    )
    return model


def _mlp(*widths: int) -> list[nn.Module]:
    """Linear layers through ``widths`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return layers


def _digits_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), *_mlp(64, 128, 64, 10))


class DenseAutoencoder(nn.Module):
    """Flatten → dense encoder (ReLU) → linear code → dense decoder (ReLU) → sigmoid → image."""

    def __init__(self, image_shape: tuple[int, int, int], hidden: int, code: int) -> None:
        super().__init__()
        self.image_shape = image_shape
        pixels = image_shape[0] * image_shape[1] * image_shape[2]
        self.encoder = nn.Sequential(nn.Flatten(), *_mlp(pixels, hidden, code))
        self.decoder = nn.Sequential(*_mlp(code, hidden, pixels), nn.Sigmoid())

    def forward(self, x: Any) -> Any:
        return self.decoder(self.encoder(x)).reshape(-1, *self.image_shape)


class ConvAutoencoder(nn.Module):
    """28×28 → (stride-2 convs) 4×7×7 code → (stride-2 ConvTranspose) 28×28, linear output."""

    def __init__(self, code_channels: int = 4) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),  # 14×14
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),  # 7×7
            nn.ReLU(),
            nn.Conv2d(32, code_channels, 3, padding=1),  # code: 4×7×7 = 196 values
        )
        self.decoder = nn.Sequential(  # the code stays linear: a ReLU on it died in training
            nn.ConvTranspose2d(code_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1),  # 14×14
            nn.ReLU(),
            # linear output: behind a sigmoid the MSE gradient vanished (the bias ran to -inf
            # and the net predicted black images, MSE 0.110, within 2 epochs)
            nn.ConvTranspose2d(16, 1, 3, stride=2, padding=1, output_padding=1),  # 28×28
        )

    def forward(self, x: Any) -> Any:
        return self.decoder(self.encoder(x))


def _nuclei_unet() -> nn.Module:
    import segmentation_models_pytorch as smp

    model: nn.Module = smp.Unet(
        "tu-resnet10t",
        encoder_weights=None,
        encoder_depth=4,
        decoder_channels=(64, 32, 16, 8),
        in_channels=1,
        classes=1,
    )
    return model


# --------------------------------------------------------------------------------------------
# the registry


def _specs() -> dict[str, ZooSpec]:
    mnist = (1, 28, 28)
    specs = [
        ZooSpec(
            name="mnist_cnn",
            family="classifier_cnn",
            task="classify",
            dataset="mnist5k",
            input_shape=mnist,
            builder=_mnist_cnn,
            architecture="entropy_probe.default_model.DefaultMnistCNN (2 conv+BN, 2 dense)",
            epochs=20,
            lr=3e-3,
            batch_size=64,
            metric="accuracy",
            direction="max",
            snapshot_epochs=(0, 0.25, 1, 3, 10, 20),
            augment="shift2",
        ),
        ZooSpec(
            name="mnist_timm",
            family="classifier_cnn",
            task="classify",
            dataset="mnist5k",
            input_shape=mnist,
            builder=_mnist_timm,
            architecture="timm regnetx_002, in_chans=1, num_classes=10",
            epochs=20,
            lr=3e-3,
            batch_size=64,
            metric="accuracy",
            direction="max",
            snapshot_epochs=(0, 0.25, 1, 3, 10, 20),
            augment="shift2",
            notes="trained from scratch: no pretrained weights are available offline",
        ),
        ZooSpec(
            name="digits_mlp",
            family="classifier_mlp",
            task="classify",
            dataset="digits",
            input_shape=(1, 8, 8),
            builder=_digits_mlp,
            architecture="MLP 64-128-64-10, ReLU",
            epochs=40,
            lr=3e-3,
            batch_size=64,
            metric="accuracy",
            direction="max",
            snapshot_epochs=(0, 0.25, 1, 3, 10, 40),
        ),
        ZooSpec(
            name="mnist_dense_ae",
            family="dense_autoencoder",
            task="reconstruct",
            dataset="mnist5k",
            input_shape=mnist,
            builder=lambda: DenseAutoencoder(mnist, hidden=256, code=64),
            architecture="dense AE 784-256-64-256-784, ReLU, sigmoid output",
            epochs=30,
            lr=2e-3,
            batch_size=64,
            metric="mse",
            direction="min",
            snapshot_epochs=(0, 0.25, 1, 3, 10, 30),
        ),
        ZooSpec(
            name="digits_dense_ae",
            family="dense_autoencoder",
            task="reconstruct",
            dataset="digits",
            input_shape=(1, 8, 8),
            builder=lambda: DenseAutoencoder((1, 8, 8), hidden=48, code=16),
            architecture="dense AE 64-48-16-48-64, ReLU, sigmoid output",
            epochs=60,
            lr=3e-3,
            batch_size=64,
            metric="mse",
            direction="min",
            snapshot_epochs=(0, 0.25, 1, 3, 15, 60),
        ),
        ZooSpec(
            name="mnist_conv_ae",
            family="conv_autoencoder",
            task="reconstruct",
            dataset="mnist5k",
            input_shape=mnist,
            builder=ConvAutoencoder,
            architecture="conv AE 1-16-32-4 (stride-2 convs) / ConvTranspose 4-32-16-1, "
            "linear output",
            epochs=30,
            lr=2e-3,
            batch_size=64,
            metric="mse",
            direction="min",
            snapshot_epochs=(0, 0.25, 1, 3, 10, 30),
        ),
        ZooSpec(
            name="nuclei_unet",
            family="encoder_decoder",
            task="segment",
            dataset="nuclei",
            dataset_kwargs=MappingProxyType({"tile": 64}),
            input_shape=(1, 64, 64),
            builder=_nuclei_unet,
            architecture="SMP Unet, encoder tu-resnet10t (depth 4, no pretrained weights), "
            "decoder channels 64-32-16-8",
            epochs=60,
            lr=3e-3,
            batch_size=8,
            metric="dice",
            direction="max",
            snapshot_epochs=(0, 1, 3, 10, 30, 60),
            augment="dihedral",
            notes="held out: the right quarter of the image (the last 2 of 8 tile columns)",
        ),
    ]
    return {s.name: s for s in specs}


ZOO: Mapping[str, ZooSpec] = MappingProxyType(_specs())


def list_members(family: str | None = None) -> list[str]:
    """Member names (sorted), optionally only those of one family."""
    return sorted(n for n, s in ZOO.items() if family is None or s.family == family)


def get_spec(name: str) -> ZooSpec:
    """The spec of ``name``; unknown names raise :class:`UnknownNameError` with suggestions."""
    try:
        return ZOO[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(ZOO), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(
            f"unknown zoo member {name!r}.{hint} Valid: {', '.join(list_members())}."
        ) from None
