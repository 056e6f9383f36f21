"""batch-toggle: bring Logis SMS-notification preferences into agreement with a file."""

from __future__ import annotations

__version__ = "0.1.0"
