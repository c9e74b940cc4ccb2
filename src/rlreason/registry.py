"""Parts by name: a config value is a built-in's short name or an import path to the user's own.

Every pluggable part (task, sampler, schedule, loss aggregation, advantage estimator, sample
selector) is resolved here, so a researcher's part in their own module plugs in by writing its
path (``my_pkg.my_module.MyThing``) where a built-in's name would go, with no edit of this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlreason.errors import ConfigError, first_line


def import_object(path: str, field: str) -> Any:
    """The object at ``package.module.Name``; one line naming ``field`` if it does not import."""
    module_name, _, attribute = str(path).rpartition(".")
    if not module_name:
        raise ConfigError(f"{field}={path!r} is not an import path (package.module.Name)")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or an error raised while importing the user's module
        raise ConfigError(f"{field}={path!r}: cannot import module {module_name!r} ({first_line(error)[:200]})") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"{field}={path!r}: module {module_name!r} has no {attribute!r}") from None


def resolve(value: str, builtins: dict[str, str], field: str) -> Any:
    """A built-in part by its short name, or the user's by import path."""
    value = str(value)
    if value in builtins:
        return import_object(builtins[value], field)
    if "." in value:
        return import_object(value, field)
    raise ConfigError(
        f"{field}={value!r} is not one of {', '.join(builtins)} (or an import path package.module.Name)"
    )


def check_subclass(cls: Any, base: type, field: str, value: Any) -> type:
    """``cls``, what ``field=value`` named, if it subclasses ``base`` and implements its abstract methods;
    else one line naming the field and the interface."""
    interface = f"{base.__module__}.{base.__name__}"
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{field}={value!r} is not a subclass of {interface}")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise ConfigError(f"{field}={value!r} does not implement {', '.join(missing)} ({interface})")
    return cls
