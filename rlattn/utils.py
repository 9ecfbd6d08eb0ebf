"""Small helpers shared by the registries (credit strategies, rewards)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def import_dotted(path: str, what: str) -> Callable:
    """Import ``package.module:attr[.attr...]`` and return it; ``what`` names it in errors.

    Users' escape hatch from the registries: ``credit_strategy: my_pkg.credit:fn`` or
    ``reward_funcs: [my_pkg.rewards:fn]``. Every failure is a ValueError that says which part failed.
    """
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"{what} {path!r} is not a dotted path 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({err})") from err
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise ValueError(f"{what} {path!r} is not callable (got {type(obj).__name__})")
    return obj
