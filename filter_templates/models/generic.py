"""Any CNN as a model family: ``--model package.module:function``.

A *model path* ``package.module:function`` names a callable that returns an ``nn.Module`` (it gets
``num_classes=`` when its signature takes it). Its channel groups are discovered once
(:mod:`.discover`) and it then behaves like a built-in family: ``base_filters`` are the free
groups' widths in execution order, and the builder makes a fresh plain module at any counts.

Importing code is a decision only the user may make, on the command line or in Python: a model
path is *loaded* by :func:`load_model` (what ``--model``/``--models`` and the Python API call) and
only then can a record that names it (a config file, a run directory) be rebuilt in this process.
A file alone never imports anything.

Family names: ``package.module:function`` or, with fixed groups or the ``groups`` reading,
``package.module:function[fix=name1,name2;reading=groups]`` (one name, one model, whatever caches
and records key on it; the default reading, ``modules``, is left out).
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import torch.nn as nn

from filter_templates.core.errors import UsageError
from filter_templates.core.images import IMAGE_SIZE
from filter_templates.core.scaling import scale_count
from filter_templates.models.discover import Plan, discover
from filter_templates.models.readings import DEFAULT_READING, check_reading
from filter_templates.models.registry import Family
from filter_templates.models.torchvision_ops import import_module

__all__ = ["GenericFamily", "load_model", "generic_family", "family_name", "split_name"]

ModelSource = Union[str, nn.Module, Callable[..., nn.Module]]

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_NAME = re.compile(r"^(?P<path>[^\[\]]+?)(?:\[(?P<opts>[^\]]*)\])?$")
DISCOVERY_CLASSES = 10  # the class count the callable is built with for discovery; the output is rebuilt

# Model paths loaded by a flag travel to this process's workers (sweep --jobs N, Ray) in this variable:
# a worker rebuilds what its parent's command line named, nothing else.
ENV_LOADED = "FILTER_TEMPLATES_MODELS"

_LOADED: dict[str, Callable[[], nn.Module]] = {}  # model path -> zero-argument factory (trusted)
_SOURCES: dict[str, Any] = {}  # model path -> the object it was loaded from
_FAMILIES: dict[tuple[str, int], "GenericFamily"] = {}  # (family name, input size) -> family
DISCOVERY_SIZE = IMAGE_SIZE  # the input side a model is discovered at unless its data says otherwise


@dataclass(frozen=True)
class GenericFamily(Family):
    """A family discovered from a user's model; ``fingerprint`` identifies its group plan."""

    fingerprint: str = ""
    layer_modules: tuple[tuple[str, ...], ...] = ()
    plan: Plan | None = field(default=None, compare=False, repr=False)


def family_name(path: str, fixed: Sequence[str] = (), reading: str = DEFAULT_READING) -> str:
    fixed = sorted(dict.fromkeys(f.strip() for f in fixed if f.strip()))
    opts = ([f"fix={','.join(fixed)}"] if fixed else []) + (
        [f"reading={reading}"] if reading != DEFAULT_READING else []
    )
    return f"{path}[{';'.join(opts)}]" if opts else path


def split_name(name: str) -> tuple[str, tuple[str, ...]]:
    """``(model path, fixed names)`` of a family name."""
    path, fix, _ = split_full(name)
    return path, fix


def split_full(name: str) -> tuple[str, tuple[str, ...], str]:
    """``(model path, fixed names, reading)`` of a family name."""
    m = _NAME.match(name.strip())
    if not m or not _PATH.match(m["path"]):
        raise UsageError(f"invalid model {name!r}: expected a family name or package.module:function")
    opts: dict[str, str] = {}
    for part in filter(None, (m["opts"] or "").split(";")):
        key, eq, value = part.partition("=")
        if not eq or key not in ("fix", "reading") or key in opts:
            raise UsageError(f"invalid model {name!r}: options are [fix=a,b;reading=modules|groups]")
        opts[key] = value
    fix = tuple(f for f in opts.get("fix", "").split(",") if f)
    return m["path"], fix, check_reading(opts.get("reading", DEFAULT_READING))


def _factory(fn: Callable[..., Any], label: str) -> Callable[[], nn.Module]:
    """A zero-argument builder of the base model, passing ``num_classes`` when the callable takes it."""
    if isinstance(fn, nn.Module):
        return lambda: fn
    if not callable(fn):
        raise UsageError(f"model {label!r} is not callable (a function or class returning an nn.Module)")
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {"num_classes": DISCOVERY_CLASSES} if "num_classes" in params else {}

    def make() -> nn.Module:
        try:
            model = fn(**kwargs)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(
                f"calling model {label!r} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            ) from None
        if not isinstance(model, nn.Module):
            raise UsageError(f"model {label!r} returned {type(model).__name__}, not an nn.Module")
        return model

    return make


def _import(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # as `python -m` would: the console script can load ./mypkg/models.py
    try:
        obj: Any = import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise UsageError(f"cannot load model {path!r}: {exc}") from None
    except AttributeError:
        raise UsageError(f"cannot load model {path!r}: module {module!r} has no {attr!r}") from None
    return obj


def load_model(
    model: ModelSource,
    *,
    fixed: Sequence[str] = (),
    name: str | None = None,
    image_size: int = DISCOVERY_SIZE,
    reading: str | None = None,
) -> str:
    """Load a user's model so that it can be used (and rebuilt from records) in this process; returns
    its family name. ``model``: a ``package.module:function`` path (what ``--model`` gives), or in
    Python a callable returning an ``nn.Module``, or a module (its architecture, not its weights, is
    used). ``name`` labels a callable or module (default: its ``module:qualname``). ``image_size``:
    the side of the square inputs it is discovered on (its data's: a flatten feeding a linear layer
    counts the map's size). ``reading``: ``modules`` (default) or ``groups`` (:mod:`.readings`)."""
    if reading is not None:
        check_reading(reading)
    if isinstance(model, str):
        path, fix, named = split_full(model)
        fixed = tuple(fixed) + fix
        if reading is not None and named != DEFAULT_READING and named != reading:
            raise UsageError(f"model {model!r} names reading={named} but --reading {reading} was given")
        reading = reading or named
        if name is not None:
            raise UsageError("name= applies to a callable or module, not to a model path")
        source = _import(path)
        factory = _factory(source, path)
        allowed = os.environ.get(ENV_LOADED, "").split()
        if path not in allowed:
            os.environ[ENV_LOADED] = " ".join(allowed + [path])
    else:
        path = name or _default_label(model)
        if not _PATH.match(path):
            raise UsageError(f"model label {path!r} must look like package.module:function")
        source, factory = model, _factory(model, path)
    if _SOURCES.get(path, source) is not source:  # another object under that name (code reloaded): rediscover
        for key in [k for k in _FAMILIES if split_name(k[0])[0] == path]:
            del _FAMILIES[key]
    _SOURCES[path], _LOADED[path] = source, factory
    full = family_name(path, fixed, reading or DEFAULT_READING)
    generic_family(full, image_size)  # discover now: errors surface where the user named the model
    return full


def _default_label(model: Any) -> str:
    obj = type(model) if isinstance(model, nn.Module) else model
    mod = getattr(obj, "__module__", None) or "model"
    qual = getattr(obj, "__qualname__", "") or getattr(obj, "__name__", "model")
    return f"{mod}:{qual.replace('<locals>.', '').replace('<', '').replace('>', '')}"


def generic_family(name: str, image_size: int = DISCOVERY_SIZE) -> GenericFamily:
    """The family of a loaded model; a model path that was not loaded by a flag (or the Python API)
    in this process is refused: records and config files never import code. Discovered once per
    input size (``image_size`` px square)."""
    if (name, image_size) in _FAMILIES:
        return _FAMILIES[name, image_size]
    path, fixed, reading = split_full(name)
    if path not in _LOADED and path in os.environ.get(ENV_LOADED, "").split():
        _SOURCES[path] = _import(path)  # a worker of a command that named it
        _LOADED[path] = _factory(_SOURCES[path], path)
    if path not in _LOADED:
        raise UsageError(
            f"model {path!r} is Python code; only a command-line flag may name code to import: "
            f"pass --model {path} (for sweep: --models {path})"
        )
    plan = discover(
        _LOADED[path](), fixed, name=_class_name(path), input_shape=(3, image_size, image_size), reading=reading
    )
    fam = _family(name, path, plan)
    _FAMILIES[name, image_size] = fam
    return fam


def _class_name(path: str) -> str:
    return "Templated_" + re.sub(r"\W", "_", path.rpartition(":")[2])


def _family(name: str, path: str, plan: Plan) -> GenericFamily:
    n_fixed = sum(g.role == "fixed" for g in plan.groups)

    def build(
        filters: Sequence[int], num_classes: int = 10, stem_width: float = 1.0, divisor: int = 1, floor: int = 1
    ) -> nn.Module:
        widths = plan.widths(
            filters,
            num_classes,
            lambda base: scale_count(base, stem_width, floor=floor, divisor=divisor),
            lambda count: scale_count(count, 1.0, floor=floor, divisor=divisor),
        )
        return plan.build(widths)

    modules = [tuple(dict.fromkeys(m for i in layer.members for m in plan.groups[i].modules)) for layer in plan.layers]
    unit = (
        "stage or multi-branch module's output width (its inner layers scale in proportion)"
        if plan.reading == "modules"
        else "channel group's width"
    )
    return GenericFamily(
        name=name,
        base_filters=tuple(layer.base for layer in plan.layers),
        layer_names=tuple(layer.name for layer in plan.layers),
        builder=build,
        unit=unit + " (the layers each template layer holds are listed per template layer)",
        description=f"{path}: {len(plan.layers)} template layers ({plan.reading} reading) discovered with torch.fx"
        + (f", {n_fixed} fixed" if n_fixed else ""),
        fingerprint=plan.fingerprint,
        layer_modules=tuple(modules),
        plan=plan,
    )
