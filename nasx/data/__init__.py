"""Data modules: in memory (scikit-learn digits, CIFAR-10/100 pickles, moving digits clips) and streamed from JPEGs
(ImageNet) or videos decoded with PyAV (Kinetics-400/600, Something-Something V2); joint training over several data
sets with one head each; parsers and crop datasets for the retrieval sets (IMDb-Face, IJB-C, DeepFashion2)."""

from nasx.data.cifar import CIFARDataModule, load_cifar_batch
from nasx.data.digits import DigitsDataModule
from nasx.data.imagenet import ImageNetDataModule
from nasx.data.joint import JointBatch, JointDataModule
from nasx.data.kinetics import KineticsDataModule
from nasx.data.memory import InMemoryDataModule, TensorPairDataset, collate_pair, random_shift_flip, shift_images
from nasx.data.moving_digits import MovingDigitsDataModule
from nasx.data.ssv2 import SSV2DataModule

__all__ = [
    "CIFARDataModule",
    "DigitsDataModule",
    "ImageNetDataModule",
    "InMemoryDataModule",
    "JointBatch",
    "JointDataModule",
    "KineticsDataModule",
    "MovingDigitsDataModule",
    "SSV2DataModule",
    "TensorPairDataset",
    "collate_pair",
    "load_cifar_batch",
    "random_shift_flip",
    "shift_images",
]
