"""Datasets: the registry and the loaders that fill it.

One module per dataset family: ``shapes`` (built in), ``omniglot``, ``imagenet``
(``miniimagenet``), ``tieredimagenet``, ``cifar`` (``cifarfs``, ``fc100``), ``cub``
and ``userdata`` (``imagetext_folder``, ``hf``). Each registered class has
``load(data_root=None, download=False, **options) -> FewShotDataset``.
"""
import inspect

from tasks.datasets.base import DATASETS, SPLITS, FewShotDataset
from tasks.datasets import shapes  # noqa: F401  (registers the built-in dataset)
from tasks.datasets import cifar, cub, imagenet, omniglot, tieredimagenet, userdata  # noqa: F401  (register)
from tasks.options import check_options

__all__ = ["DATASETS", "SPLITS", "FewShotDataset", "describe_dataset", "load_dataset"]


def load_dataset(name: str, data_root: str | None = None, **options) -> FewShotDataset:
    """Build the dataset registered as ``name`` (see ``ls datasets``).

    Raises:
        BenchmarkError: an option the loader does not take (with the closest ones) or of the wrong type.
    """
    loader = DATASETS.get(name)
    check_options("dataset", name, loader, options, "dataset_options", supplied=("data_root",))
    return loader.load(data_root=data_root, **options)


def describe_dataset(name: str) -> str:
    """What ``ls datasets NAME`` prints: the summary, every option with its default, and the layout notes."""
    import sys

    loader = DATASETS.get(name)
    params = [p for k, p in inspect.signature(loader.load).parameters.items() if k != "data_root"]
    lines = [f"{name}: {(loader.__doc__ or '').strip()}", "",
             "options (--set dataset_options.KEY=VALUE, or dataset_options: in a config file):"]
    lines += [f"  {p.name} = {p.default!r}" if p.default is not p.empty else f"  {p.name}" for p in params]
    notes = inspect.getdoc(sys.modules[loader.__module__]) or ""
    return "\n".join(lines + ["", notes] if notes else lines)
