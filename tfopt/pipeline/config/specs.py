"""The validated recipe as frozen dataclasses: :class:`Recipe` and its :class:`DataSpec`, :class:`ModelSpec` and
:class:`StageSpec` (what :func:`tfopt.pipeline.load_recipe` returns, and the pipeline runs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

from tfopt.errors import ConfigError

__all__ = ["Recipe", "StageSpec", "DataSpec", "ModelSpec"]


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The ``data`` section: what :func:`tfopt.data.load` loads (plus an optional class subset)."""

    name: str
    val_fraction: float = 0.2
    data_dir: str | None = None
    cache: bool = True
    classes: tuple | None = None
    vocab_size: int | None = None
    seq_len: int | None = None
    balance: str | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "DataSpec":
        """A DataSpec from a data section as a dict (``dataclasses.asdict`` of one, or a validated section).

        >>> DataSpec.from_dict({"name": "digits", "classes": [0, 1]}).classes
        (0, 1)
        """
        return cls(**{**values, "classes": tuple(values["classes"]) if values.get("classes") else None})

    def key(self) -> str:
        """A string identifying the dataset (cache key)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The ``model`` section: a registered builder and its arguments, or the path of a saved model."""

    builder: str | None = None
    args: dict = dataclasses.field(default_factory=dict)
    path: str | None = None

    @classmethod
    def from_dict(cls, values: dict) -> "ModelSpec":
        """A ModelSpec from a model section as a dict (e.g. a distill stage's ``student``).

        >>> ModelSpec.from_dict({"builder": "mlp", "args": None})
        ModelSpec(builder='mlp', args={}, path=None)
        """
        return cls(values.get("builder"), dict(values.get("args") or {}), values.get("path"))


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage: its type, its unique name (the folder ``NN_name``), options with defaults, and where it is."""

    type: str
    name: str
    index: int
    options: dict
    implicit: bool = False

    @property
    def dirname(self) -> str:
        """String, the stage's folder in the run directory, e.g. ``02_prune``."""
        return f"{self.index:02d}_{self.name}"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A validated recipe. ``raw`` is the resolved recipe (defaults and implicit stages filled in)."""

    name: str
    seed: int
    data: DataSpec
    model: ModelSpec
    training: dict
    stages: tuple
    source: str
    raw: dict

    @property
    def hash(self) -> str:
        """String, the SHA-256 of the resolved recipe (a run directory belongs to one hash)."""
        text = json.dumps(self.raw, sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name``."""
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise ConfigError(f"no stage named {name!r}; stages: {', '.join(s.name for s in self.stages)}")
