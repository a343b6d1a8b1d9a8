"""Data modules: in memory (scikit-learn digits, CIFAR-10/100 pickles) and streamed from JPEGs (ImageNet); parsers
and crop datasets for the retrieval sets (IMDb-Face, IJB-C, DeepFashion2)."""

from nasx.data.cifar import CIFARDataModule, load_cifar_batch
from nasx.data.digits import DigitsDataModule
from nasx.data.imagenet import ImageNetDataModule
from nasx.data.memory import InMemoryDataModule, TensorPairDataset, collate_pair, random_shift_flip, shift_images

__all__ = [
    "CIFARDataModule",
    "DigitsDataModule",
    "ImageNetDataModule",
    "InMemoryDataModule",
    "TensorPairDataset",
    "collate_pair",
    "load_cifar_batch",
    "random_shift_flip",
    "shift_images",
]
