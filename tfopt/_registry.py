"""Name-or-config lookups shared by ``tfopt.losses.get`` and ``tfopt.schedules.get``."""

from __future__ import annotations

from tfopt.errors import ConfigError

__all__ = ["from_registry"]


def from_registry(kind: str, identifier, registry: dict, deserialize, **kw):
    """A new object from ``registry[identifier](**kw)``, or ``deserialize(identifier)`` for a config dict.

    Unknown names, undeserializable configs and bad keyword arguments raise ConfigError naming them.

    >>> from_registry("colour", "red", {"red": dict}, None, shade=2)
    {'shade': 2}
    """
    if isinstance(identifier, dict):
        try:
            return deserialize(identifier)
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"{kind} config {identifier!r} could not be deserialized: {err}") from err
    if not isinstance(identifier, str) or identifier.lower() not in registry:
        raise ConfigError(f"{kind}={identifier!r} is unknown; allowed: {', '.join(sorted(registry))}")
    try:
        return registry[identifier.lower()](**kw)
    except TypeError as err:
        raise ConfigError(f"{kind}={identifier!r} got bad arguments {sorted(kw)}: {err}") from err
