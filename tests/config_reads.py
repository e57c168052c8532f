"""What a stage reads, recorded while it runs in this process.

`ConfigReads` patches `__getattribute__` on every class of a loaded Config (found by walking
it, so it works for dataclasses and pydantic models alike) and records the dotted params key
of each field read, e.g. `student.train.epochs`. Reads done while the Config validates, copies
or hashes itself (`validate`, `replace`, `to_dict`, `hash`, pydantic's `model_*`) are not the
stage's: they are not recorded.

A copy made with some fields changed (`dataclasses.replace`, `.replace(...)`,
`model_copy(update=...)`, as a search trial does with its sampled weights) holds those fields
from the code, not from params.yaml: reading them is not a params read.

`CodeCalls` records which files of the `study` package run a function during the stage
(module and class bodies run on import do not count).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import threading
from pathlib import Path
from typing import Any

# Methods whose field reads serve the Config itself (validation, copying, provenance).
OWN_METHODS = ("validate", "replace", "to_dict", "hash", "model_dump", "model_dump_json",
               "model_copy")
COPY_METHODS = ("replace", "model_copy")


def field_names(obj: Any) -> tuple[str, ...] | None:
    """The field names of a config section (dataclass or pydantic model), else None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return tuple(f.name for f in dataclasses.fields(obj))
    fields = getattr(type(obj), "model_fields", None)  # pydantic v2
    if isinstance(fields, dict):
        return tuple(fields)
    return None


def section_classes(root: Any) -> dict[type, tuple[str, ...]]:
    """Every class in the tree of sections under `root`, with its field names."""
    found: dict[type, tuple[str, ...]] = {}
    stack = [root]
    while stack:
        obj = stack.pop()
        names = field_names(obj)
        if names is None or type(obj) in found:
            continue
        found[type(obj)] = names
        stack += [object.__getattribute__(obj, n) for n in names]
    return found


class ConfigReads:
    """Context manager: `with ConfigReads(cfg) as reads: ...` then `reads.keys`."""

    def __init__(self, root: Any, skip: tuple[str, ...] = ("profile",)):
        self.root_type = type(root)
        self.classes = section_classes(root)
        self.skip = set(skip)
        self.keys: set[str] = set()
        self._paths: dict[int, str] = {}
        self._keep: list[Any] = []  # ids stay valid while their objects live
        self._local = threading.local()
        self._saved: list[tuple[Any, str, Any, bool]] = []
        self._changed: dict[int, set[str]] = {}  # id of a copy -> fields the code set

    def _path(self, obj: Any) -> str | None:
        if type(obj) is self.root_type:
            return ""
        return self._paths.get(id(obj))

    def _record(self, obj: Any, name: str, value: Any) -> None:
        if getattr(self._local, "inside", 0) or name not in self.classes.get(type(obj), ()):
            return
        path = self._path(obj)
        if path is None:
            return
        key = f"{path}.{name}" if path else name
        if type(value) in self.classes:  # a section: its fields are recorded when read
            self._paths[id(value)] = key
            self._keep.append(value)
        elif key not in self.skip and name not in self._changed.get(id(obj), ()):
            self.keys.add(key)

    def _copied(self, copy: Any, changes: dict | None) -> Any:
        if changes and type(copy) in self.classes:
            self._mark(copy, changes)
        return copy

    def _mark(self, obj: Any, changes: dict) -> None:
        """Note the leaves of `obj` that `changes` set. A section given whole (a modified copy,
        or a dict of its changed fields) is followed down: only what changed in it is code's,
        whether the copy keeps that object or rebuilds it from a dump."""
        fields = self.classes.get(type(obj), ())
        own = set()
        for name, given in changes.items():
            sub = object.__getattribute__(obj, name) if name in fields else None
            if type(sub) in self.classes and (isinstance(given, dict) or type(given) in self.classes):
                nested = given if isinstance(given, dict) else dict.fromkeys(
                    self._changed.get(id(given), ()))
                self._mark(sub, nested)
            else:
                own.add(name)
        if own:
            self._changed.setdefault(id(obj), set()).update(own)
            self._keep.append(obj)

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, owner.__dict__.get(name), name in owner.__dict__))
        setattr(owner, name, value)

    def __enter__(self) -> ConfigReads:
        for cls in self.classes:
            original = cls.__getattribute__

            def getattribute(obj, name, _original=original):
                value = _original(obj, name)
                if not name.startswith("_"):
                    self._record(obj, name, value)
                return value

            self._patch(cls, "__getattribute__", getattribute)
            for method in OWN_METHODS:
                if callable(getattr(cls, method, None)):
                    self._patch(cls, method, self._unrecorded(getattr(cls, method),
                                                              method in COPY_METHODS))
        self._patch(dataclasses, "replace", self._unrecorded(dataclasses.replace, True))
        return self

    def _unrecorded(self, method, copies: bool = False):
        def wrapper(*args, **kwargs):
            self._local.inside = getattr(self._local, "inside", 0) + 1
            try:
                result = method(*args, **kwargs)
            finally:
                self._local.inside -= 1
            if not copies:
                return result
            # A copy of a copy keeps what the code set in the first (a trial's weights in a
            # config that then gets its process's thread count).
            self._copied(result, self._changes_of(args[0]) if args else {})
            return self._copied(result, kwargs.get("update", kwargs))
        return wrapper

    def _changes_of(self, obj: Any) -> dict:
        """The leaves the code set in `obj`, a copy (nested dicts of `True`), else {}."""
        out: dict = {}
        for name in self.classes.get(type(obj), ()):
            sub = object.__getattribute__(obj, name)
            if type(sub) in self.classes and (nested := self._changes_of(sub)):
                out[name] = nested
        out.update(dict.fromkeys(self._changed.get(id(obj), ()), True))
        return out

    def __exit__(self, *exc) -> None:
        for owner, name, value, had in reversed(self._saved):
            if had:
                setattr(owner, name, value)
            else:
                delattr(owner, name)
        self._saved.clear()


class CodeCalls:
    """Context manager: the files under `package_dir` whose functions were called."""

    def __init__(self, package_dir: Path):
        self.prefix = str(Path(package_dir).resolve()) + "/"
        self.files: set[str] = set()

    def _trace(self, frame, event, arg):
        # Returns None: no line tracing inside the frame, calls only (cheap). Module and
        # class bodies (run on import, not optimised frames) are not the stage's calls.
        code = frame.f_code
        if code.co_flags & inspect.CO_OPTIMIZED and code.co_filename.startswith(self.prefix):
            self.files.add(code.co_filename[len(self.prefix):])

    def __enter__(self) -> CodeCalls:
        self._previous = sys.gettrace()
        sys.settrace(self._trace)
        threading.settrace(self._trace)
        return self

    def __exit__(self, *exc) -> None:
        sys.settrace(self._previous)
        threading.settrace(None)
