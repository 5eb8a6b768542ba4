"""pytest plugin for Flax's own nnx tests, copied next to them by ``compat/flax_tests.py``.

- Excludes the tests that are out of scope (Linen interop, Flax's ``nnx.compat`` shim, jax's
  experimental mutable arrays, private Flax internals), recording each with its reason.
- In the ``ours`` mode (the tests rewritten to ``import nnx``), a name or submodule that our
  ``nnx`` lacks becomes a placeholder while the test files are imported, so that one missing
  name fails only the tests that use it, not every test of the file. Once collection is over,
  any use of a placeholder (a call, an operator, a truth value...) raises ``AttributeError``.
- Writes every test's outcome to ``$NNX_COMPAT_RESULTS`` (CSV: id, file, outcome, detail).
"""

from __future__ import annotations

import csv
import functools
import importlib.abc
import importlib.machinery
import inspect
import os
import sys
import types

import pytest

MODE = os.environ.get("NNX_COMPAT_MODE", "ours")

EXCLUDED_FILES = {
    "bridge/": "Linen interop (flax.nnx.bridge)",
    "nnx_compat_test.py": "Flax's nnx.compat shim for its old API",
    "mutable_array_test.py": "jax's experimental mutable arrays",
    "ids_test.py": "a private Flax id helper",
}
# Source fragments that put a test out of scope, with the reason.
EXCLUDED_SOURCE = [
    ("nnx.compat", "goes through Flax's nnx.compat shim"),
    ("nnx.graphlib.", "private Flax internals (nnx.graphlib node classes)"),
    ("_pytree__", "private Flax internals (_pytree__ fields)"),
    ("nnx.statelib.", "private Flax internals (statelib)"),
    ("nnx.extract.", "private Flax internals (nnx.extract)"),
    ("nnx.variablelib.VarDefaults", "private Flax internals (variablelib.VarDefaults)"),
    ("HijaxVariable", "jax's experimental mutable arrays (hijax Variables)"),
    ("mutable_array", "jax's experimental mutable arrays"),
]

_collecting = True


# -- placeholders for names our nnx lacks -------------------------------------------------


class _MissingError(AttributeError):
    pass


def _missing(name: str) -> _MissingError:
    return _MissingError(f"nnx has no attribute {name!r} (not implemented)")


class Placeholder:
    """Stands for a missing name while test files are imported; fails on any use after."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def _use(self, what: str) -> Placeholder:
        if _collecting:
            return Placeholder(f"{self._name}{what}")
        raise _missing(self._name)

    def __getattr__(self, attr: str):
        if attr.startswith("_") or attr == "pytestmark":  # probed by pytest and inspect
            raise AttributeError(attr)
        return self._use(f".{attr}")

    def __call__(self, *args, **kwargs):
        if _collecting and len(args) == 1 and not kwargs:
            if isinstance(args[0], type):
                return args[0]  # a class decorator at import time: keep the class
            if inspect.isfunction(args[0]):
                return _failing_function(self._name, args[0])  # a decorated test or helper
        return self._use("(...)")

    def __getitem__(self, key):
        return self._use("[...]")

    def __mro_entries__(self, bases):
        return (_missing_base(self._name),)

    def __setattr__(self, name, value):
        raise _missing(self._name)

    def __repr__(self) -> str:
        return f"<missing nnx name {self._name}>"


def _while_collecting(result):
    """A dunder that gives ``result(self, *args)`` while test files are imported, raises after."""

    def method(self, *args):
        if _collecting:
            return result(self, *args)
        raise _missing(object.__getattribute__(self, "_name"))

    return method


_placeholder = lambda self, *args: Placeholder(f"{self._name}(op)")  # noqa: E731
for _name in (
    "add", "radd", "sub", "rsub", "mul", "rmul", "matmul", "rmatmul", "truediv", "rtruediv",
    "floordiv", "mod", "pow", "neg", "pos", "or", "ror", "and", "rand", "invert",
):
    setattr(Placeholder, f"__{_name}__", _while_collecting(_placeholder))
for _name, _result in [
    ("bool", lambda self: True), ("len", lambda self: 0), ("iter", lambda self: iter(())),
    ("hash", lambda self: id(self)), ("eq", lambda self, other: self is other),
    ("ne", lambda self, other: self is not other), ("contains", lambda self, x: False),
    ("instancecheck", lambda self, x: False), ("subclasscheck", lambda self, x: False),
    ("enter", lambda self: self), ("exit", lambda self, *exc: False),
    ("int", lambda self: 0), ("float", lambda self: 0.0), ("index", lambda self: 0),
    ("lt", lambda self, other: False), ("le", lambda self, other: False),
    ("gt", lambda self, other: False), ("ge", lambda self, other: False),
]:
    setattr(Placeholder, f"__{_name}__", _while_collecting(_result))


def _failing_function(name: str, fn):
    @functools.wraps(fn)
    def missing(*args, **kwargs):
        raise _missing(name)

    return missing


def _missing_base(name: str) -> type:
    def __new__(cls, *args, **kwargs):
        raise _missing(name)

    return type(f"Missing_{name.replace('.', '_')}", (), {"__new__": __new__})


def _module_getattr(module_name: str):
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return Placeholder(f"{module_name}.{name}" if module_name != "nnx" else name)

    return __getattr__


class _MissingModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import nnx.foo`` / ``from nnx.foo import x`` for a submodule nnx lacks: a module of
    placeholders instead of an ImportError for the whole test file."""

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith("nnx.") or not _collecting:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _module_getattr(spec.name)
        return module

    def exec_module(self, module):
        pass


def _install_placeholders() -> None:
    import nnx  # noqa: F401 - our package, imported before the tests

    for name, module in list(sys.modules.items()):
        if (name == "nnx" or name.startswith("nnx.")) and "__getattr__" not in vars(module):
            module.__getattr__ = _module_getattr(name)
    sys.meta_path.append(_MissingModuleFinder())


if MODE == "ours":
    _install_placeholders()


# -- exclusions and results ---------------------------------------------------------------

_results: dict[str, tuple[str, str, str]] = {}


def _relative(path: str) -> str:
    root = os.environ.get("NNX_COMPAT_ROOT", os.path.dirname(__file__))
    return os.path.relpath(path, root)


def _source_of(item: pytest.Item) -> str:
    obj = getattr(item, "obj", None)
    try:
        return inspect.getsource(inspect.unwrap(obj)) if obj is not None else ""
    except (OSError, TypeError):
        return ""


def _exclusion(item: pytest.Item) -> str | None:
    rel = _relative(str(item.path))
    for prefix, reason in EXCLUDED_FILES.items():
        if rel.startswith(prefix) or rel.endswith(prefix):
            return reason
    source = _source_of(item)
    for fragment, reason in EXCLUDED_SOURCE:
        if fragment in source:
            return reason
    return None


def pytest_collection_modifyitems(session, config, items):
    kept, dropped = [], []
    for item in items:
        reason = _exclusion(item)
        if reason is None:
            kept.append(item)
        else:
            dropped.append(item)
            _results[item.nodeid] = (_relative(str(item.path)), "excluded", reason)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_collection_finish(session):
    global _collecting
    _collecting = False


def pytest_collectreport(report):
    if report.failed:
        _results[report.nodeid] = (report.nodeid.split("::")[0], "collection-error",
                                   _short(report.longreprtext))


def pytest_runtest_logreport(report):
    rel = report.nodeid.split("::")[0]
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if report.passed:
            outcome = "passed"
        elif report.skipped:
            outcome = "skipped"
        else:
            outcome = "failed" if report.when == "call" else "error"
        _results[report.nodeid] = (rel, outcome, "" if report.passed else _short(report.longreprtext))
    elif report.when == "teardown" and report.failed and report.nodeid in _results:
        _results[report.nodeid] = (rel, "error", _short(report.longreprtext))


def _short(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.startswith("E ")]
    return (lines[0][1:].strip() if lines else text.strip().splitlines()[-1] if text.strip() else "")[:300]


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("NNX_COMPAT_RESULTS")
    if not path:
        return
    # One file per process: with pytest-xdist, workers know the exclusions, the controller the
    # outcomes; compat/flax_tests.py merges them.
    path = f"{path}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["test", "file", "outcome", "detail"])
        for nodeid, (rel, outcome, detail) in sorted(_results.items()):
            writer.writerow([nodeid, rel, outcome, detail])
