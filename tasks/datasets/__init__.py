"""Datasets: the registry and the loaders that fill it."""
from tasks.datasets.base import DATASETS, SPLITS, FewShotDataset
from tasks.datasets import shapes  # noqa: F401  (registers the built-in dataset)
from tasks.datasets import imagenet, omniglot  # noqa: F401

__all__ = ["DATASETS", "SPLITS", "FewShotDataset", "load_dataset"]


def load_dataset(name: str, data_root: str | None = None, **options) -> FewShotDataset:
    """Build the dataset registered as ``name`` (see ``ls datasets``)."""
    return DATASETS.get(name).load(data_root=data_root, **options)
