"""Style counts of arena battles from a Parquet file, column by column.

Chatbot Arena's battles keep per-side style counts in a ``conv_metadata`` struct
(``sum_assistant_a_tokens``, ``header_count_a: {h1: .., h6: ..}``, ...). Reading that column row
by row makes a Python dict per vote; here every count is summed in Arrow, batch by batch, so a
million votes cost a few column operations. The values and names are those of the row reader
(:func:`prefkit.data.battles.iter_battle_chunks` with ``with_style=True``): a nested struct counts
as the sum of its numbers, a missing or non-numeric value is NaN, and names drop the side marker.
"""

from __future__ import annotations

import os

import numpy as np

STYLE_COLUMNS = ("conv_metadata", "style")


def _totals(column):
    """Float per row: the number itself, or the sum of a struct's numeric leaves (NaN when any
    leaf, or the value, is missing or not a number)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_struct(kind):
        parts = [_totals(column.field(k)) for k in range(kind.num_fields)]
        total = np.sum(parts, axis=0) if parts else np.zeros(len(column))
        return np.where(column.is_null().to_numpy(zero_copy_only=False), np.nan, total)
    if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and not pa.types.is_boolean(
            kind):
        return pc.cast(column, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    return np.full(len(column), np.nan)


def parquet_style_counts(path: str | os.PathLike
                         ) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """``(names, side_a, side_b)`` (``[N, d]`` float counts, NaN where missing) from the
    ``conv_metadata`` (else ``style``) struct column of a Parquet file; None when the file has no
    such struct column (the row reader then applies, with its checks)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .battles import _style_pairs

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError):
        return None
    with pf:
        schema = pf.schema_arrow
        column = next((c for c in STYLE_COLUMNS if c in schema.names), None)
        if column is None or not pa.types.is_struct(schema.field(column).type):
            return None
        struct = schema.field(column).type
        keys = [struct.field(k).name for k in range(struct.num_fields)]
        # the row reader's naming rule, applied to the field positions
        pairs = _style_pairs({key: float(k) for k, key in enumerate(keys)})
        names = sorted(pairs)
        side_a, side_b = [], []
        try:
            for batch in pf.iter_batches(batch_size=1 << 20, columns=[column]):
                values = batch.column(0)
                totals = [_totals(values.field(k)) for k in range(struct.num_fields)]
                nulls = values.is_null().to_numpy(zero_copy_only=False)
                for side, out in ((0, side_a), (1, side_b)):
                    block = np.column_stack([totals[int(pairs[n][side])] for n in names]) \
                        if names else np.empty((len(values), 0))
                    block[nulls] = np.nan
                    out.append(block)
        except (pa.ArrowException, OSError):
            return None
    if not side_a:
        return names, np.empty((0, len(names))), np.empty((0, len(names)))
    return names, np.vstack(side_a), np.vstack(side_b)
