"""``load_problem("file.py:make_problem")``: the user's own problem, for ``gradest compare --problem``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from gradest.problems.base import Problem

__all__ = ["load_problem", "as_problem"]


def as_problem(value: Any, *, name: str = "custom", where: str = "compare") -> Problem:
    """A :class:`Problem` from a Problem or an ``(f, dist_builder, params)`` tuple.

    Raises:
        TypeError: anything else, naming what was given.

    Example:
        >>> import torch
        >>> from gradest.problems import as_problem
        >>> problem = as_problem((lambda x: x**2, lambda m: torch.distributions.Normal(m, 1.0), [torch.tensor(0.5)]))
        >>> problem.name, problem.exact
        ('custom', False)
    """
    if isinstance(value, Problem):
        return value
    if isinstance(value, tuple) and len(value) == 3:
        f, dist, params = value
        if isinstance(params, (list, tuple)):
            return Problem(f, dist, params, name=name)
        return Problem(f, dist, (params,), name=name)
    kind = f"a tuple of {len(value)}" if isinstance(value, tuple) else type(value).__name__
    raise TypeError(
        f"{where}: problem={name} is {kind}; expected a gradest.problems.Problem or a tuple "
        "(f, dist_builder, params), e.g. (lambda x: x**2, lambda m: Normal(m, 1.0), [torch.tensor(0.5)])."
    )


def load_problem(spec: str) -> Problem:
    r"""Import ``FILE.py:FUNCTION`` or ``MODULE:FUNCTION``, call ``FUNCTION()`` and return its problem.

    The function takes no arguments and returns a :class:`Problem` or an ``(f, dist_builder, params)``
    tuple. A ``FILE.py`` is run as a module named after the file, with its folder first on
    ``sys.path`` while it loads (so it can import its neighbours); a ``MODULE`` is imported from
    ``sys.path``. The problem is named after the function, unless the Problem has its own name.

    Args:
        spec: ``"path/to/file.py:make_problem"`` or ``"package.module:make_problem"``.

    Raises:
        ValueError: the spec has no ``:FUNCTION`` part, the file does not exist, or the module has no
            such function.
        TypeError: the function does not return a Problem or a 3-tuple.

    Example:
        >>> import pathlib, tempfile
        >>> from gradest.problems import load_problem
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "my_problem.py"
        >>> _ = path.write_text(
        ...     "import torch\n"
        ...     "from gradest.problems import Problem\n"
        ...     "def make_problem():\n"
        ...     "    return Problem(lambda x: (x > 0).double(), lambda m: torch.distributions.Normal(m, 1.0),\n"
        ...     "                   [torch.tensor(0.5)])\n")
        >>> load_problem(f"{path}:make_problem")
        make_problem
    """
    where = "load_problem"
    if not isinstance(spec, str) or ":" not in spec.strip(":"):
        raise ValueError(
            f"{where}: problem={spec!r} must be FILE.py:FUNCTION or MODULE:FUNCTION, e.g. "
            "my_problem.py:make_problem, where make_problem() returns a gradest.problems.Problem."
        )
    source, attr = spec.rsplit(":", 1)
    module = _import(where, spec, source)
    if not hasattr(module, attr):
        found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(
            f"{where}: problem={spec!r}: {source} has no {attr!r}; its functions are: {', '.join(found) or 'none'}."
        )
    obj = getattr(module, attr)
    value = obj() if callable(obj) and not isinstance(obj, Problem) else obj
    problem = as_problem(value, name=attr, where=f"{where}: {spec!r} returned")
    if isinstance(value, Problem) and value.name in ("problem", "custom"):
        problem.name = attr
    return problem


def _import(where: str, spec: str, source: str) -> Any:
    path = Path(source)
    if source.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ValueError(f"{where}: problem={spec!r}: there is no file {source!r} (from {Path.cwd()}).")
        name = f"_gradest_problem_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"{where}: problem={spec!r}: {source!r} cannot be loaded as a Python module.")
        module = importlib.util.module_from_spec(module_spec)
        folder = str(path.resolve().parent)
        sys.path.insert(0, folder)
        try:
            module_spec.loader.exec_module(module)
        finally:
            sys.path.remove(folder)
        return module
    try:
        return importlib.import_module(source)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"{where}: problem={spec!r}: no module named {e.name!r} (write FILE.py:FUNCTION for a file)."
        ) from e

