"""Finding registrations: the built-in component modules, installed plugins and ``--plugin`` modules.

Built-ins are found by looking, not by a list: every module of ``bioscale.rules``, ``bioscale.models`` and
``bioscale.data`` whose source has a line starting with ``@register_`` is imported. A new rule in a new file
is picked up without editing anything else, and modules of machinery (layers, loaders) are never imported
here, so nothing pulls in torch.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType

from bioscale.errors import BioscaleError

COMPONENT_PACKAGES = ("bioscale.rules", "bioscale.models", "bioscale.data")
ENTRY_POINT_GROUP = "bioscale.plugins"
_REGISTERS = re.compile(r"^@register_(rule|arch|dataset)\(", re.MULTILINE)

_loaded = False
_plugins: list[str] = []


def component_modules() -> list[str]:
    """Names of the built-in modules that register components (read from their source, not imported)."""
    names = []
    for package in COMPONENT_PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations is not None
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            path = Path(spec.submodule_search_locations[0]) / f"{info.name}.py"
            if not info.ispkg and path.is_file() and _REGISTERS.search(path.read_text(encoding="utf-8")):
                names.append(f"{package}.{info.name}")
    return sorted(names)


def load_builtins() -> None:
    """Import every built-in component module, then the installed plugins (entry points). Idempotent."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in component_modules():
        importlib.import_module(name)
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        _load(entry.value, lambda entry=entry: entry.load(), f"entry point {entry.name!r} of {ENTRY_POINT_GROUP}")


def load_plugins(items: list[str]) -> None:
    """Import plugin modules, each a dotted module name or a path to a ``.py`` file; their decorators
    register components exactly as the built-ins do. A plugin loaded before is not loaded again."""
    load_builtins()  # a plugin's names must not shadow a built-in silently: register the built-ins first
    for item in items:
        if item in _plugins:
            continue
        _load(item, lambda item=item: _import(item), f"plugin {item!r}")
        _plugins.append(item)


def plugins() -> list[str]:
    """The ``--plugin`` items loaded in this process, for worker processes to load the same ones."""
    return list(_plugins)


def _import(item: str) -> ModuleType:
    path = Path(item)
    if item.endswith(".py") or path.is_file():
        if not path.is_file():
            raise BioscaleError(f"plugin {item!r}: no such file. Give a path to a .py file or an importable "
                                "module name (e.g. --plugin examples/plugin_drtp.py or --plugin mypkg.rules).")
        name = f"bioscale_plugin_{re.sub(r'[^0-9A-Za-z_]', '_', str(path.resolve()))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # so pickling (worker processes) can find its classes by module name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    return importlib.import_module(item)


def _load(item: str, load: object, what: str) -> None:
    try:
        load()  # type: ignore[operator]
    except BioscaleError:
        raise
    except ModuleNotFoundError as exc:
        raise BioscaleError(f"{what} cannot be imported: no module named {exc.name!r}. Check the name (a "
                            "dotted module on the Python path, or a path to a .py file) and that its "
                            "dependencies are installed.") from None
    except Exception as exc:
        raise BioscaleError(f"{what} failed while registering its components: {type(exc).__name__}: {exc}. "
                            "Fix the plugin, or run without it.") from None
