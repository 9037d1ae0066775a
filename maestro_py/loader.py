"""Loading `module:function` handlers from an agent root: imported once, re-imported when the helper file
changes, and never confused with a same-named helper of another root."""

from __future__ import annotations

import importlib
import functools
import sys
import threading
from pathlib import Path
from typing import Any, Callable

_IMPORT_LOCK = threading.Lock()
# module name -> (root it came from, source file, (mtime_ns, size)) for modules imported from an agent root,
# so an edited helper is re-imported and a same-named helper from another root is not mistaken for it.
_ORIGINS: dict[str, tuple[Path, Path, tuple[int, int]]] = {}



def load(module_name: str, function_name: str, root: Path) -> Callable[[dict[str, Any]], Any]:
    root = _resolved(root)
    module = _imported(module_name, root)
    if module is not None:  # the common case: imported before, from this root, unchanged (one stat)
        return _attribute(module, module_name, function_name)
    with _IMPORT_LOCK:
        _forget_stale(module_name, root)
        entry = str(root)
        sys.path.insert(0, entry)
        writes_bytecode = sys.dont_write_bytecode
        # Keep __pycache__ out of agent roots; it also sidesteps the 1-second pyc staleness window.
        sys.dont_write_bytecode = True
        try:
            importlib.invalidate_caches()
            module = importlib.import_module(module_name)
        finally:
            sys.dont_write_bytecode = writes_bytecode
            try:
                sys.path.remove(entry)
            except ValueError:
                pass
        _remember(module_name, root)
    return _attribute(module, module_name, function_name)


def _attribute(module: Any, module_name: str, function_name: str) -> Callable[[dict[str, Any]], Any]:
    fn: Callable[[dict[str, Any]], Any] | None = getattr(module, function_name, None)
    if fn is None:
        raise LookupError(f"module {module_name!r} has no attribute {function_name!r}")
    if not callable(fn):
        raise TypeError(f"{module_name}.{function_name} is not callable")
    return fn


def _prefixes(module_name: str) -> list[str]:
    parts = module_name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
@functools.lru_cache(maxsize=16)
def _resolved(root: Path) -> Path:
    """The root with its links resolved: one lstat per path component, so worked out once per root (a daemon's
    root is fixed; it is resolved when it starts, too)."""
    return root.resolve()


def _imported(module_name: str, root: Path) -> Any:
    """The module if it is imported and nothing in its package chain is stale for `root`; else None."""
    for name in _prefixes(module_name):
        origin = _ORIGINS.get(name)
        if name not in sys.modules:
            return None
        if origin is not None and (origin[0] != root or _signature(origin[1]) != origin[2]):
            return None
    return sys.modules[module_name]


def _forget_stale(module_name: str, root: Path) -> None:
    """Drop cached agent modules that were edited since import or that belong to another root."""
    stale = False
    for name in _prefixes(module_name):
        origin = _ORIGINS.get(name)
        if origin is not None and name in sys.modules:
            origin_root, source, signature = origin
            stale = stale or origin_root != root or _signature(source) != signature
        if stale:  # once a package is stale, everything below it must be re-imported too
            sys.modules.pop(name, None)
            _ORIGINS.pop(name, None)


def _remember(module_name: str, root: Path) -> None:
    for name in _prefixes(module_name):
        module = sys.modules.get(name)
        source = getattr(module, "__file__", None)
        if not source:
            continue
        path = Path(source).resolve()
        signature = _signature(path)
        if signature is not None and path.is_relative_to(root):
            _ORIGINS[name] = (root, path, signature)
