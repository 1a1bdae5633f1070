"""The ``kiki-events`` command: ``serve``, ``tail`` and ``schema``."""

from .main import main

__all__ = ["main"]
