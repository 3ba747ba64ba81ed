"""The exceptions PyVision raises, one class per failure a caller can act on.

    PyVisionError
    ├── ConfigError            a bad config value or unknown key (also a pydantic ValidationError)
    ├── MediaError             a missing, unreadable or corrupt image or video
    └── SandboxError           the sandbox could not do what was asked
        ├── SandboxStartError  the zygote could not start (or isolation demanded is unavailable)
        └── SessionClosedError the session was used after ``close()``

Failures of the *model's code* (exceptions, timeouts, crashes, memory) are never raised: they come
back in an :class:`~pyvision_env.sandbox.ExecutionResult`, because the model must see them.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError


class PyVisionError(Exception):
    """Base class of every error PyVision raises."""


class ConfigError(PyVisionError, ValueError):
    """A configuration value is invalid; the message names the key and the accepted values."""


class MediaError(PyVisionError, ValueError):
    """An image or video could not be loaded; the message names the file."""


class SandboxError(PyVisionError, RuntimeError):
    """The sandbox runtime failed (not the code it was running)."""


class SandboxStartError(SandboxError):
    """The zygote process could not be started, or the isolation asked for is not available."""


class SessionClosedError(SandboxError):
    """A sandbox session was used after it was closed."""


def did_you_mean(name: str, valid: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the valid name closest to a misspelled one, or ``""`` when none is as
    close as ``cutoff`` (:func:`difflib.get_close_matches`)."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_validation_error(exc: ValidationError, model: type[BaseModel], valid_keys: Iterable[str] = ()) -> str:
    """A pydantic error as one short line per problem: ``unknown key 'max_turn' (did you mean 'max_turns'?)``
    or ``max_turns=0: Input should be greater than or equal to 1``.

    Pydantic's own text spreads each problem over three lines with a documentation URL, and names no
    close valid key; callers raise :class:`ConfigError` with this text ``from None`` so that the user
    sees one message instead of two chained tracebacks. ``valid_keys`` adds accepted spellings that are
    not fields of ``model`` (e.g. the ``image_path`` column of a task file).
    """
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        where = ".".join(str(part) for part in loc)
        message = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error["type"] == "extra_forbidden":
            fields = _fields_at(model, loc[:-1])
            extra = valid_keys if len(loc) == 1 else ()
            problems.append(f"unknown key {where!r}{did_you_mean(str(loc[-1]), [*fields, *extra])}")
        elif error["type"] == "missing":
            problems.append(f"missing key {where!r}")
        elif where:
            value = repr(error.get("input"))
            value = value if len(value) <= 60 else value[:57] + "..."
            problems.append(f"{where}={value}: {message}")
        else:
            problems.append(message)
    return "; ".join(problems)


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) model at ``path``; empty where the path leaves nested models."""
    from pydantic import BaseModel

    current: Any = model
    for part in path:
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return []
        candidates = [a for a in (field.annotation, *typing.get_args(field.annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)]
        if not candidates:
            return []
        current = candidates[0]
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


__all__ = [
    "ConfigError",
    "MediaError",
    "PyVisionError",
    "SandboxError",
    "SandboxStartError",
    "SessionClosedError",
    "describe_validation_error",
    "did_you_mean",
]
