"""Registry behaviour and its error messages."""
from __future__ import annotations

import pytest

import learners  # noqa: F401
from learners.registry import FUSIONS, LEARNERS
from tasks.datasets import DATASETS
from tasks.errors import BenchmarkError
from tasks.registry import Registry


def test_register_get_and_wildcards():
    reg: Registry = Registry("widget")

    @reg.register("alpha")
    class Alpha:
        pass

    @reg.register("alpine")
    class Alpine:
        pass

    assert reg.get("alpha") is Alpha and "alpine" in reg and len(reg) == 2
    assert reg.names("alp*") == ["alpha", "alpine"] and reg.names("*ine") == ["alpine"]


def test_duplicate_name_is_an_error():
    reg: Registry = Registry("widget")
    reg.register("x")(type("A", (), {}))
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x")(type("B", (), {}))


def test_unknown_name_suggests_closest():
    with pytest.raises(BenchmarkError) as err:
        LEARNERS.get("protonett")
    assert "unknown learner 'protonett'" in str(err.value) and "Did you mean 'protonet'" in str(err.value)
    with pytest.raises(BenchmarkError, match="Did you mean 'concat'"):
        FUSIONS.get("concatt")
    with pytest.raises(BenchmarkError, match="unknown dataset 'shape'.*Did you mean 'shapes'"):
        DATASETS.get("shape")


def test_builtin_components_are_registered():
    assert "protonet" in LEARNERS and {"concat", "attention"} <= set(FUSIONS.names())
    assert "shapes" in DATASETS
