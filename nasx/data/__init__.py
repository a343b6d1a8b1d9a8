"""In-memory image data modules: scikit-learn digits (no download) and CIFAR-10/100 from the python pickles."""

from nasx.data.cifar import CIFARDataModule, load_cifar_batch
from nasx.data.digits import DigitsDataModule
from nasx.data.memory import InMemoryDataModule, TensorPairDataset, collate_pair, random_shift_flip, shift_images

__all__ = [
    "CIFARDataModule",
    "DigitsDataModule",
    "InMemoryDataModule",
    "TensorPairDataset",
    "collate_pair",
    "load_cifar_batch",
    "random_shift_flip",
    "shift_images",
]
