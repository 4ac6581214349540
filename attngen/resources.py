"""Where the top-level data folders live: the checkout first, then the installed wheel.

``templates/``, ``schedules/`` and ``targets/`` sit at the top of the repository and are
copied into the wheel as ``attngen/_data/<kind>`` (see pyproject.toml), so one function finds
them in a source checkout, an editable install and a normal install alike.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

KINDS = ("templates", "schedules", "targets")
_PACKAGE = Path(__file__).resolve().parent
_REPO_ROOT = _PACKAGE.parent


@functools.lru_cache(maxsize=None)
def resource_dir(kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"unknown resource kind {kind!r}; known: {KINDS}")
    checkout = _REPO_ROOT / kind
    if (_REPO_ROOT / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    installed = _PACKAGE / "_data" / kind
    if installed.is_dir():
        return installed
    raise FileNotFoundError(f"attngen {kind}/ not found in {checkout} nor in {installed}")


@functools.lru_cache(maxsize=None)
def load_schedule(name: str):
    """Import ``schedules/<name>.py`` by path (the folder is data, not a package)."""
    path = resource_dir("schedules") / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no schedule module {path}")
    spec = importlib.util.spec_from_file_location(f"attngen_schedules.{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
