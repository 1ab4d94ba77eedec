"""What makes two runs alike in a report, and how a table says which runs it shows.

Runs are pooled into one number only when they are the same experiment but for the seed: their
*setting* is every result field of the run's configuration (``training.config.experiment``, the one definition
the results store keys on) except the seed and the table's own axes (dataset, family and its
reading, template, width or budget). Runs of one table whose settings differ -- another recipe,
learning rate, number of epochs, test views, filter floor -- are split into rows labelled by the
fields that differ, so the report never averages unlike runs as if they were seeds. A field added
to the configuration later is a result field like any other and splits rows the day it differs.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from filter_templates.core.images import IMAGE_SIZE
from filter_templates.data import mirrors
from filter_templates.sweep.selection import setting_key
from filter_templates.training.config import RECIPES, RESULT_KEYS, VALUE_BEFORE, experiment, test_views

__all__ = ["setting", "setting_key", "differing", "label_fields", "fmt_value", "row_label", "views_of", "caption"]

#: Result fields that are the table's own axes (or follow from them): never a setting. A pruning
#: baseline's ``prune`` is its column (the method, named by its template) at its row (the budget).
AXES = ("arch", "dataset", "seed", "prune")
#: Architecture fields that are axes or follow from them (the width and what it sizes, the dataset's
#: classes, the reading, which the family label carries).
ARCH_AXES = ("family", "template", "width", "filters", "stem_width", "widths", "classes", "as_published")


def setting(record: Mapping[str, Any]) -> dict[str, Any]:
    """The setting of a run's configuration (``TrainConfig.to_dict()``) or of a budget point's
    identity: every result field but the axes, in ``RESULT_KEYS`` order, then the architecture's
    options (divisor, floor, ...). A field the record leaves out has the value runs without it had
    (``VALUE_BEFORE``), else None. ``tta`` is what the run did: off on a dataset whose mirrored
    images are not of their class (:func:`data.mirrors`), as the training loop turns it off."""
    ident = experiment(record)
    out = {k: ident.get(k, VALUE_BEFORE.get(k)) for k in RESULT_KEYS if k not in AXES}
    if out.get("tta") and "dataset" in record and not mirrors(str(record["dataset"])):
        out["tta"] = False
    arch = ident.get("arch") or {}
    out.update({k: v for k, v in arch.items() if k not in ARCH_AXES})
    return out


def differing(settings: Iterable[Mapping[str, Any]]) -> list[str]:
    """The fields whose value is not the same in every one of ``settings`` (first-seen order)."""
    settings = list(settings)
    fields = list(dict.fromkeys(k for s in settings for k in s))
    return [k for k in fields if len({repr(s.get(k)) for s in settings}) > 1]


def _implied(field: str, settings: Sequence[Mapping[str, Any]]) -> bool:
    """True when every setting has its recipe's value for ``field``: the recipe column says it."""
    return all(
        s.get("recipe") in RECIPES
        and field in RECIPES[s["recipe"]]
        and repr(s.get(field)) == repr(RECIPES[s["recipe"]][field])
        for s in settings
    )


def label_fields(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The differing fields a row label needs: the recipe stands for the fields every row has at its
    recipe's value (paper against fast: one ``recipe`` column, not thirteen). The CSV keeps every
    differing field."""
    return [k for k in differing(settings) if k == "recipe" or not _implied(k, settings)]


def views_of(s: Mapping[str, Any]) -> int:
    """How many views of each test image the final accuracy of a run of setting ``s`` averages: the
    number its training loop records (``training.config.test_views`` of the same effective ``tta``)."""
    return test_views(bool(s.get("tta")), int(s.get("tta_shift") or 0))


def fmt_value(v: Any) -> str:
    """A setting's value as a table shows it."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def row_label(s: Mapping[str, Any], fields: Sequence[str]) -> str:
    """``recipe=paper, lr=0.1``: the setting's values of ``fields`` (empty when none)."""
    return ", ".join(f"{k}={fmt_value(s.get(k))}" for k in fields)


def _departures(s: Mapping[str, Any]) -> list[str]:
    """The recipe fields where ``s`` departs from its recipe's values (as this version defines it);
    a field without effect (None: ``muon_lr`` without Muon) departs from nothing."""
    rec = RECIPES.get(str(s.get("recipe")), {})
    return [f"{k}={fmt_value(s[k])}" for k in rec if s.get(k) is not None and repr(s[k]) != repr(rec[k])]


def caption(settings: Sequence[Mapping[str, Any]]) -> str:
    """One line that says which runs a table shows: the recipe (with what departs from its
    defaults), the epochs, the test views and (other than 32) the image size, each one value or "per row"."""
    if not settings:
        return "Runs: none done yet."
    recipes = list(dict.fromkeys(str(s.get("recipe")) for s in settings))
    parts = []
    for r in recipes:
        mine = [s for s in settings if str(s.get("recipe")) == r]
        shared = [d for d in _departures(mine[0]) if all(d in _departures(s) for s in mine)]
        parts.append(r + (f" ({', '.join(shared)}; the recipe's other values as defined)" if shared else ""))
    epochs = sorted({int(s["epochs"]) for s in settings if s.get("epochs") is not None})
    views = sorted({views_of(s) for s in settings})
    sizes = sorted({int(s.get("image_size") or IMAGE_SIZE) for s in settings})  # 32: the built-in datasets'
    per_row = " (per row)"
    return (
        f"Runs: recipe{'s' * (len(recipes) > 1)} "
        + ", ".join(parts)
        + (per_row if len(recipes) > 1 else "")
        + f"; {'/'.join(map(str, epochs)) or '?'} epoch{'s' * (epochs != [1])}"
        + (per_row if len(epochs) > 1 else "")
        + f"; {'/'.join(map(str, views))} test view{'s' * (views != [1])} per image in the final accuracy"
        + (per_row if len(views) > 1 else "")
        + (
            f"; {'/'.join(map(str, sizes))} px images" + (per_row if len(sizes) > 1 else "")
            if sizes != [IMAGE_SIZE]
            else ""
        )
        + "."
    )
