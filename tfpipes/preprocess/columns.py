"""Deciding each column: its stored dtype and kind (from the first pass and the user's
overrides), the label's task, the final schema and the table of inferred columns.

Kinds: ``numeric`` (float32/int64; an int64 column with few distinct values stays numeric
unless the schema says categorical), ``boolean`` and ``timestamp`` (stored int64), and string
columns ``categorical`` or ``id`` (more than ``ID_MIN_UNIQUE`` distinct values and more than
``ID_MIN_FRACTION`` of the present values, decided from the statistics). Labels: string,
boolean or timestamp values, or integers with at most ``MAX_INT_CLASSES`` distinct values, are
classes; other numbers are a regression target; ``--task`` overrides.
"""

from __future__ import annotations

from tfpipes.errors import UserError, location
from tfpipes.preprocess.inference import ColumnInference, family_type, string_kind
from tfpipes.preprocess.statistics import MAX_LABEL_CLASSES, Stats
from tfpipes.schema import KIND_DTYPES, Feature, Schema

MAX_INT_CLASSES = 100  # an integer label with more distinct values is a regression target


def column_types(families: dict, overrides: dict, label: str) -> tuple[dict, dict, dict]:
    """(dtype, kind, format) maps for every column: the inferred family's, overridden where
    the user said so (a kind alone keeps the inferred dtype when the kind allows it)."""
    types, kinds, formats = {}, {}, {}
    for name, fam in families.items():
        dtype, kind = family_type(fam)
        o = overrides.get(name, {})
        if o.get("kind"):
            kind = o["kind"]
            if not o.get("dtype") and dtype not in KIND_DTYPES[kind]:
                dtype = KIND_DTYPES[kind][0]
        if o.get("dtype"):
            dtype = o["dtype"]
            if not o.get("kind") and dtype not in KIND_DTYPES[kind]:
                kind = "categorical" if dtype == "string" else "numeric"
        types[name], kinds[name] = dtype, kind
        if o.get("format"):
            formats[name] = o["format"]
    kinds[label] = ""  # decided with the task
    return types, kinds, formats


def label_task(
    types: dict, families: dict, inference: ColumnInference, label: str, task: str, forced: bool
) -> tuple[str, str]:
    """(label dtype, task). ``forced``: the user gave the label's dtype."""
    dtype, fam = types[label], families[label]
    if not task:
        if forced:
            task = "regression" if dtype == "float32" else "classification"
        elif fam == "int" and len(inference.labels) <= MAX_INT_CLASSES:
            task = "classification"
        else:
            task = "regression" if fam in ("int", "float") else "classification"
    if task == "regression":
        if fam not in ("int", "float", "null") and not (forced and dtype != "string"):
            raise UserError(f"column {label!r}: regression needs a numeric label, not text")
        return "float32", task
    if dtype == "float32" or (dtype == "int64" and fam not in ("int", "null") and not forced):
        return "string", task  # classes named by their text (1.5, yes, 2024-01-01, ...)
    return dtype, task


def make_schema(plan, stats: Stats, overrides: dict, task: str, first_file: str) -> Schema:
    """The data set's schema: kinds final (string columns categorical or id by their counts)."""
    label, types = plan.label, plan.types
    feats = []
    for name in plan.order[:-1]:
        kind = plan.kind(name)
        if types[name] == "string" and not overrides.get(name, {}).get("kind"):
            col = stats.cols[name]
            kind = string_kind(col.unique(), col.count)
        feats.append(Feature(name, types[name], (), kind, plan.formats.get(name, "")))
    lt = types[label]
    if task == "regression":
        num_classes, vocab = 0, ()
    elif lt == "int64":
        keys = list(stats.label_hist)
        if min(keys) < 0:
            raise UserError(
                f"{location(first_file, None, label)}: integer labels must be >= 0 for "
                f"classification (found {min(keys)}); use --task regression for a number"
            )
        num_classes, vocab = int(max(keys)) + 1, ()
    else:
        vocab = tuple(sorted(str(v) for v in stats.label_hist))
        num_classes = len(vocab)
    if num_classes > MAX_LABEL_CLASSES:
        raise UserError(f"column {label!r}: {num_classes} classes is too many")
    kind = "numeric" if task == "regression" else "categorical"
    return Schema(
        features=tuple(feats),
        label=Feature(label, lt, (), kind),
        task=task,
        num_classes=num_classes,
        label_vocabulary=vocab,
    )


def column_table(schema: Schema, stats: Stats) -> str:
    """The inferred columns as a text table: name, dtype/kind, missing %, distinct values."""
    rows = [("column", "type", "missing", "distinct")]
    for f in (*schema.features, schema.label):
        col = stats.cols[f.name]
        total = col.count + col.missing
        pct = f"{100.0 * col.missing / total:.1f}%" if total else "-"
        uniq = stats.unique(f.name)
        approx = getattr(col, "approximate", False) or (
            not hasattr(col, "approximate") and stats.sampled
        )
        name = f.name + (" (label)" if f is schema.label else "")
        kind = f.kind + (f" {f.format}" if f.format else "")
        rows.append((name, f"{f.dtype}/{kind}", pct, f"~{uniq}" if approx else str(uniq)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    )
