"""Planning: which rows become requests, which are duplicates, superseded or in conflict
(units.py).

`batch_toggle.plan.TooManyInvalid` was once a documented path; the exception now lives in
errors.py with every other one. The old spelling still works, with a DeprecationWarning that
names the public one.
"""

from __future__ import annotations

import warnings
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "TooManyInvalid":
        warnings.warn("batch_toggle.plan.TooManyInvalid is deprecated: import it as "
                      "`from batch_toggle import TooManyInvalid`", DeprecationWarning,
                      stacklevel=2)
        from batch_toggle.errors import TooManyInvalid
        return TooManyInvalid
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
