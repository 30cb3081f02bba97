"""User modules named with ``--plugin``: imported to register components, and recorded.

Each loaded plugin is recorded in :data:`LOADED` with the sha256 of its source, so a run's id
covers the code of the plugins it ran with (editing a plugin never reuses stale rows) and
``run.json`` names them.
"""
from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

from tasks.errors import BenchmarkError

LOADED: dict[str, dict[str, str]] = {}  # module name -> {"path", "sha256"}


def load_plugins(modules: list[str]) -> None:
    """Import each module (a dotted name, or a ``.py`` file path) and record it.

    Raises:
        BenchmarkError: a missing file ("not found"), a module that cannot be imported, or a syntax
            error in the plugin (names the file and the line).
    """
    for name in modules:
        if name.endswith(".py") or "/" in name:
            path = Path(name)
            if not path.is_file():
                raise BenchmarkError(f"--plugin {name}: file not found ({path.resolve()})")
            sys.path.insert(0, str(path.parent.resolve()))
            name = path.stem
        try:
            module = importlib.import_module(name)
        except SyntaxError as err:
            raise BenchmarkError(f"--plugin {name}: syntax error in {err.filename}, line {err.lineno}: {err.msg}"
                                 + (f"\n    {err.text.rstrip()}" if err.text else "")) from None
        except ModuleNotFoundError as err:
            missing = "not found" if err.name == name else f"it imports {err.name!r}, which is not installed"
            raise BenchmarkError(f"--plugin {name!r}: module {missing} ({err}); give a module on the Python path "
                                 "or the path of a .py file") from None
        except ImportError as err:
            raise BenchmarkError(f"--plugin {name!r} could not be imported: {err}") from None
        source = Path(getattr(module, "__file__", "") or "")
        digest = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else "unknown"
        LOADED[name] = {"path": str(source), "sha256": digest}


def fingerprint() -> dict[str, str]:
    """``{module: sha256 of its source}`` of the loaded plugins (empty without plugins)."""
    return {name: entry["sha256"] for name, entry in sorted(LOADED.items())}
