"""Dataset pickles are read with a restricted unpickler: a crafted file cannot run code."""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest

from tasks.datasets import load_dataset, safepickle
from tasks.errors import BenchmarkError
from test_datasets import cifar_root  # noqa: F401  (fixture)


class Exploit:
    """Unpickling this calls os.system (what a crafted dataset file would do)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_numpy_arrays_and_plain_values_load(tmp_path):
    value = {"data": np.arange(12, dtype=np.uint8).reshape(3, 4), "labels": [1, 2, 3], b"raw": "text",
             "f": np.float32(1.5), "ordered": OrderedDict(a=1), "set": {1, 2}, "nested": (1.0, None, True)}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        path = tmp_path / f"ok{protocol}.pkl"
        path.write_bytes(pickle.dumps(value, protocol=protocol))
        loaded = safepickle.load(path, "test")
        assert np.array_equal(loaded["data"], value["data"]) and loaded["labels"] == [1, 2, 3]
        assert loaded[b"raw"] == "text" and loaded["f"] == 1.5 and loaded["set"] == {1, 2}


def test_a_crafted_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"data": [Exploit(marker)]}))
    with pytest.raises(BenchmarkError, match=r"refused to load the global posix\.system"):
        safepickle.load(path, "test")
    assert not marker.exists()
    # the same file through plain pickle would have run it (so the test above tests something)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_cifar_loader_refuses_a_crafted_meta_file(cifar_root, tmp_path):
    marker = tmp_path / "pwned"
    (cifar_root / "cifar-100-python" / "meta").write_bytes(pickle.dumps(Exploit(marker)))
    with pytest.raises(BenchmarkError, match="CIFAR-100: cannot read .*meta: refused to load the global"):
        load_dataset("cifarfs", str(cifar_root))
    assert not marker.exists()
