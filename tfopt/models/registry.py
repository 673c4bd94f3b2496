"""The model registry, after timm: ``@register`` a builder, ``build(name, **kwargs)`` it, ``list_models()``.

``build`` drops keyword arguments whose value is None, so an unset CLI flag or config key never overrides a
builder's default, turns unknown names and unknown arguments into a :class:`ConfigError` that lists
what is allowed, and refuses a model too large to train here before its weights take memory
(:func:`tfopt.models.blocks.parameter_budget`).
"""

from __future__ import annotations

import fnmatch
import inspect
from typing import Callable

from tfopt.errors import ConfigError

__all__ = ["register", "build", "build_for", "data_args", "list_models", "get_builder", "FROM_DATA"]

# builder arguments the data decides unless they are given: build_for fills those a builder takes
FROM_DATA = ("input_shape", "num_classes", "vocab_size", "seq_len")

_BUILDERS: dict[str, Callable] = {}


def register(name: str | Callable | None = None, *, overwrite: bool = False):
    """Register a model builder under ``name`` (default: the function's name).

    Usable as ``@register``, ``@register("name")`` or ``register("name")(fn)`` for a user's own builder.
    A builder takes keyword arguments and returns a tf_keras model.

    Args:
        name: String, the registry name, or None for the function's ``__name__``.
        overwrite: Bool, allow replacing a different builder already registered under ``name``.

    Returns:
        The decorator (or, used bare as ``@register``, the builder itself, unchanged).

    >>> from tfopt._keras import keras
    >>> @register("tiny_dense")
    ... def tiny_dense(input_shape=(4,), num_classes=2):
    ...     inputs = keras.Input(input_shape)
    ...     return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(inputs))
    >>> "tiny_dense" in list_models()
    True
    >>> _ = _BUILDERS.pop("tiny_dense")  # (keep the doctest from leaving it registered)
    """
    if callable(name):  # bare @register
        return register(None, overwrite=overwrite)(name)
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"register(name={name!r}): the name must be a non-empty string")

    def decorator(fn: Callable) -> Callable:
        if not callable(fn):
            raise ConfigError(f"register({name!r}) needs a callable builder, got {type(fn).__name__}")
        key = name or fn.__name__
        old = _BUILDERS.get(key)
        same = old is not None and (old.__module__, old.__qualname__) == (fn.__module__, fn.__qualname__)
        if old is not None and not same and not overwrite:
            raise ConfigError(
                f"a model named {key!r} is already registered ({old.__module__}.{old.__qualname__}); "
                "pick another name or pass overwrite=True"
            )
        _BUILDERS[key] = fn
        return fn

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """The sorted names of the registered models matching the fnmatch ``pattern``.

    Args:
        pattern: String, a shell-style pattern such as ``"res*"``.

    >>> list_models("res*")
    ['resnet', 'resnet50']
    """
    return sorted(n for n in _BUILDERS if fnmatch.fnmatchcase(n, pattern))


def get_builder(name: str) -> Callable:
    """The builder function registered under ``name``; ConfigError listing the known names otherwise.

    >>> get_builder("mlp").__name__
    'mlp'
    """
    try:
        return _BUILDERS[name]
    except (KeyError, TypeError):
        known = ", ".join(map(repr, list_models())) or "(none)"
        raise ConfigError(f"unknown model {name!r}; known models: {known}") from None


def build(name: str, **kwargs):
    """Build the registered model ``name`` with ``kwargs``; None-valued kwargs are dropped first.

    Args:
        name: String, a registered model name (see :func:`list_models`).
        **kwargs: The builder's arguments (e.g. ``input_shape``, ``num_classes``); a None value means
            "use the builder's default".

    Returns:
        A functional tf_keras model that outputs logits.

    >>> model = build("mlp", input_shape=(28, 28, 1), num_classes=10, dropout=None)
    >>> model.count_params()
    266610
    """
    builder = get_builder(name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params = inspect.signature(builder).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_any:
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            raise ConfigError(
                f"model {name!r} got unknown argument(s) {', '.join(map(repr, unknown))}; "
                f"its arguments: {', '.join(named)}"
            )
    missing = [
        n for n in named if params[n].default is inspect.Parameter.empty and n not in kwargs
    ]
    if missing:
        raise ConfigError(f"model {name!r} needs argument(s) {', '.join(map(repr, missing))}; "
                          f"its arguments: {', '.join(named)}")
    from tfopt.models.blocks import parameter_budget

    with parameter_budget():  # a user's builder too: no weight past what this machine can train
        return builder(**kwargs)


def data_args(info) -> dict:
    """The builder arguments ``info`` decides: ``num_classes``, and ``input_shape`` (image/feature data) or
    ``vocab_size`` and ``seq_len`` (token data).

    Args:
        info: A :class:`tfopt.data.DatasetInfo`, or a dict of some of :data:`FROM_DATA`.

    >>> data_args({"input_shape": (8, 8, 1), "num_classes": 10})
    {'input_shape': (8, 8, 1), 'num_classes': 10}
    """
    if isinstance(info, dict):
        return {k: v for k, v in info.items() if k in FROM_DATA and v is not None}
    if info.kind == "tokens":
        return {"num_classes": info.num_classes, "vocab_size": info.vocab_size, "seq_len": info.seq_len}
    return {"num_classes": info.num_classes, "input_shape": tuple(info.input_shape)}


def build_for(name: str, info, **kwargs):
    """Build the registered model ``name`` for the data ``info`` describes: each argument of :data:`FROM_DATA`
    the builder takes and ``kwargs`` does not give comes from the data (a token model given its ``vocab_size``
    takes no ``input_shape``).

    Args:
        name: String, a registered model name.
        info: A :class:`tfopt.data.DatasetInfo`, or a dict with ``input_shape``, ``num_classes``, ...
        **kwargs: The builder's other arguments (they win over the data's).

    >>> build_for("mlp", {"input_shape": (8, 8, 1), "num_classes": 10}, units=(16,)).output_shape
    (None, 10)
    """
    params = inspect.signature(get_builder(name)).parameters
    from_data = data_args(info)
    if "vocab_size" in kwargs:
        from_data.pop("input_shape", None)
    for key in FROM_DATA:
        if key in from_data and key not in kwargs and key in params:
            kwargs[key] = from_data[key]
    return build(name, **kwargs)
