"""Types found through entry points: the machinery behind ``[[sources]]``, ``[[sinks]]`` and
``[[plugins]]`` (:class:`~crossmodald.runtime.registry.PluginRegistry` builds on it).

Each source type and each sink type is a *factory class* named by an entry point (group
``crossmodald.sources`` or ``crossmodald.sinks``; the entry point's name is the ``type`` key),
as plugins are (``crossmodald.plugins``). The built-in types are found the same way as a third
party's: nothing registers itself by being imported. A factory brings ``config_model``, the
pydantic model of its table (``extra="forbid"``, with a ``type`` key), so that each table is
validated by the model of its type, with every error at once under its key path.

An entry point is imported only when a table names its type. One that cannot be imported is an
error where it is used, and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

__all__ = ["TypeLoadError", "TypeRegistry"]

log = logging.getLogger(__name__)

#: The factory protocol of the registry's kind (e.g. a source factory).
F = TypeVar("F")
#: The base every config model of the kind subclasses.
C = TypeVar("C", bound=BaseModel)


_DEFAULTS: dict[type[Any], Any] = {}


class TypeLoadError(Exception):
    """A type that is not installed, or whose entry point cannot be imported or is malformed."""


class TypeRegistry(Generic[F, C]):
    """The types of one kind (sources, sinks or plugins) installed on this machine, by name.

    Subclasses set :attr:`kind`, :attr:`group` and :attr:`base`.

    Args:
        entries: Type name -> entry point (imported on first use) or the factory class itself
            (tests, or a program embedding the daemon).
    """

    #: What the types are, for messages ("source", "sink").
    kind: ClassVar[str] = "type"
    #: The entry-point group the types are found in.
    group: ClassVar[str] = ""
    #: The model every ``config_model`` of the kind subclasses.
    base: ClassVar[type[BaseModel]] = BaseModel
    #: Class methods every factory of the kind has.
    required: ClassVar[tuple[str, ...]] = ("create",)
    #: How messages name one type of the kind ("source type"; plugins: "plugin").
    noun: ClassVar[str] = ""
    #: The error :meth:`factory` raises (a subclass of :class:`TypeLoadError`).
    error: ClassVar[type[TypeLoadError]] = TypeLoadError

    def __init__(self, entries: Mapping[str, EntryPoint | type[Any]]) -> None:
        self._entries = dict(entries)
        self._factories: dict[str, type[F]] = {}

    @classmethod
    def discover(cls) -> Self:
        """The types installed through the entry-point group :attr:`group`."""
        return cls({ep.name: ep for ep in entry_points(group=cls.group)})

    @classmethod
    def default(cls) -> Self:
        """The installed types, discovered once per process (per registry class)."""
        found = _DEFAULTS.get(cls)
        if not isinstance(found, cls):
            found = _DEFAULTS[cls] = cls.discover()
        return found

    def names(self) -> list[str]:
        """Every installed type name, sorted (importable or not)."""
        return sorted(self._entries)

    def installed(self) -> str:
        """What messages say is installed: ``installed: a, b``; with nothing at all, where the
        built-in types come from (a checkout put on ``PYTHONPATH`` has no entry points)."""
        if self._entries:
            return f"installed: {', '.join(self.names())}"
        return (
            f"none installed in entry-point group {self.group!r}: crossmodald's own come with "
            "its installed package; in a checkout, pip install -e . rather than PYTHONPATH"
        )

    def entry_point(self, name: str) -> EntryPoint | None:
        """The entry point type ``name`` was found by; None if it was given as a class or is
        not installed. Its ``dist`` is the distribution that installed it."""
        entry = self._entries.get(name)
        return entry if isinstance(entry, EntryPoint) else None

    def factory(self, name: str) -> type[F]:
        """The factory of type ``name``, importing its entry point on first use.

        Raises:
            TypeLoadError: No such type is installed, or it cannot be imported, or what it
                names has no ``config_model`` (a subclass of :attr:`base`) or no ``create``.
        """
        if name in self._factories:
            return self._factories[name]
        entry = self._entries.get(name)
        if entry is None:
            raise self.error(f"unknown {self._noun} {name!r} ({self.installed()})")
        if isinstance(entry, EntryPoint):
            try:
                loaded: Any = entry.load()
            except Exception as exc:
                raise self.error(
                    f"{self._noun} {name!r}: cannot import {entry.value}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        else:
            loaded = entry
        model = getattr(loaded, "config_model", None)
        if not (isinstance(model, type) and issubclass(model, self.base)):
            raise self.error(
                f"{self._noun} {name!r}: {loaded!r} has no `config_model` "
                f"(a subclass of {self.base.__name__})"
            )
        for method in self.required:
            if not callable(getattr(loaded, method, None)):
                raise self.error(f"{self._noun} {name!r}: {loaded!r} has no `{method}`")
        self.check_factory(name, loaded)
        factory: type[F] = loaded
        self._factories[name] = factory
        return factory

    @property
    def _noun(self) -> str:
        return self.noun or f"{self.kind} type"

    def check_factory(self, name: str, factory: Any) -> None:
        """Checks of a kind beyond ``config_model`` and :attr:`required` (none by default).

        Raises:
            TypeLoadError: (:attr:`error`) ``factory`` is malformed.
        """

    def config_model(self, name: str) -> type[C]:
        """The config model of type ``name`` (see :meth:`factory` for the errors)."""
        model: type[C] = getattr(self.factory(name), "config_model")  # noqa: B009
        return model

    def validate_table(self, table: object) -> C:
        """Validate one table by the model its ``type`` names.

        Raises:
            pydantic.ValidationError: Every problem, with key paths relative to the table (an
                unknown or broken type is an error at ``type``).
        """
        result, errors = self._validate(table)
        if result is None:
            raise ValidationError.from_exception_data(self.kind, errors)
        return result

    def validate_list(self, tables: object) -> object:
        """Validate a list of tables (``[[sources]]``); anything else is returned unchanged.

        Raises:
            pydantic.ValidationError: Every problem of every table, under ``index.key``.
        """
        if not isinstance(tables, list | tuple):
            return tables  # the field's own list validation says what is wrong
        out: list[object] = []
        errors: list[InitErrorDetails] = []
        for index, table in enumerate(tables):
            if isinstance(table, self.base):
                out.append(table)  # already validated (a config built in code)
                continue
            result, table_errors = self._validate(table)
            out.append(result)
            errors.extend({**err, "loc": (index, *err["loc"])} for err in table_errors)
        if errors:
            raise ValidationError.from_exception_data(self.kind, errors)
        return out

    def _validate(self, table: object) -> tuple[C | None, list[InitErrorDetails]]:
        if not isinstance(table, Mapping):
            return None, [_error("table", f"expected a {self.kind} table", (), table)]
        name = table.get("type")
        if name is None:
            return None, [_error("missing", "", ("type",), table)]
        if not isinstance(name, str):
            message = f"expected a {self.kind} type name ({self.installed()})"
            return None, [_error("type_name", message, ("type",), name)]
        try:
            model = self.config_model(name)
        except TypeLoadError as exc:
            # The formatter adds "(got NAME)".
            message = (
                str(exc)
                if name in self._entries
                else f"unknown {self.kind} type ({self.installed()})"
            )
            return None, [_error("unknown_type", message, ("type",), name)]
        try:
            return model.model_validate(dict(table)), []
        except ValidationError as exc:
            return None, [_reraisable(err) for err in exc.errors()]


def _error(kind: str, message: str, loc: tuple[str | int, ...], value: object) -> InitErrorDetails:
    if kind == "missing":
        return InitErrorDetails(type="missing", loc=loc, input=value)
    # Braces would be read as placeholders of the message template.
    template = message.replace("{", "{{").replace("}", "}}")
    return InitErrorDetails(type=PydanticCustomError(kind, template), loc=loc, input=value)


def _reraisable(err: ErrorDetails) -> InitErrorDetails:
    """An error of a table's model, in the form that can be raised again under a new path."""
    details = InitErrorDetails(type=err["type"], loc=err["loc"], input=err.get("input"))
    if "ctx" in err:
        details["ctx"] = err["ctx"]
    try:
        ValidationError.from_exception_data("check", [details])
    except (KeyError, TypeError, ValueError):
        # A custom error kind (a third party's model raised PydanticCustomError): keep its words.
        return _error(err["type"], err["msg"], err["loc"], err.get("input"))
    return details
