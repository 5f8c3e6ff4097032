"""pyroute2's modules without its package `__init__`, which imports all of the library's ~370
modules (IPDB, NDB and sqlite3, conntrack, nl80211, plan9, ...) where a scan uses three
(netlink sockets, the sock_diag requests, IPRoute): a third of the import, a tenth of a scan's
process.

The package is registered as it is on disk, without running its `__init__`; the first name
asked of the package itself that is not one of its modules (`from pyroute2 import IPRoute`)
runs the `__init__` then, so every other user of pyroute2 in the process sees the whole
library as `import pyroute2` gives it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Callable
from types import ModuleType

PACKAGE = "pyroute2"
_lock = threading.Lock()


def without_package_init() -> None:
    """Make `import pyroute2.<module>` load only that module (and what it imports). Call it
    before such an import; a no-op once pyroute2 is imported (either way) or if absent."""
    with _lock:
        if PACKAGE in sys.modules:
            return
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or spec.loader is None:
            return  # not installed: the import that follows fails as it would have
        package = importlib.util.module_from_spec(spec)
        package.__getattr__ = _on_first_use(package)  # type: ignore[method-assign]  # PEP 562
        sys.modules[PACKAGE] = package


def _on_first_use(package: ModuleType) -> Callable[[str], object]:
    def __getattr__(name: str) -> object:
        """A module of the package is imported alone; any other name runs the `__init__`."""
        if importlib.util.find_spec(f"{PACKAGE}.{name}") is not None:
            return importlib.import_module(f"{PACKAGE}.{name}")
        with _lock:
            if "__getattr__" in vars(package):
                del package.__getattr__
                assert package.__spec__ is not None and package.__spec__.loader is not None
                package.__spec__.loader.exec_module(package)
        return getattr(package, name)  # AttributeError as usual for what it does not define

    return __getattr__
