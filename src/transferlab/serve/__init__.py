"""The HTTP service: Image Features API and Custom Collections API over the library.

Needs the ``serve`` extra (``pip install 'transferlab[serve]'``). Start it with
``transferlab serve``, or build the app in Python::

    from transferlab.serve import Settings, create_app
    app = create_app(Settings(data_dir="data"))
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
    import sqlalchemy  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "transferlab.serve needs the service dependencies: pip install 'transferlab[serve]'"
    ) from exc

from transferlab.serve.app import create_app as create_app
from transferlab.serve.settings import Settings as Settings

__all__ = ["Settings", "create_app"]
