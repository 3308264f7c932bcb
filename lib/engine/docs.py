"""Shared parameter documentation, written once (nilearn's ``fill_doc`` in small): a docstring
names ``%(key)s`` and :func:`fill_doc` puts :data:`DOCS` [key] there, indented as the line."""
from __future__ import annotations

DOCS = {
    "rows_folds": """rows : array of int, optional
    Restrict the folds to these rows (inner folds inside an outer training set).

Returns
-------
list of (train, test)
    Row indices of each fold.""",
    "design_Y": """design : Design
    From :func:`lib.engine.ridge.prepare` (shared by every target set with the same features
    and TRs).
Y : array (n_trs, n_targets)
    The responses.
batch_targets : int
    Targets fitted at once (memory).
source : str
    Named in error messages.""",
    "d_segments": """d : array (n_rows,)
    :func:`lib.engine.paired.fit_difference`.
segments : array (n_rows,)
    Each row's story.""",
}


def fill_doc(f):
    """Put :data:`DOCS` into ``f``'s docstring where it says ``%(key)s``."""
    lines = []
    for line in (f.__doc__ or "").split("\n"):
        stripped = line.strip()
        if stripped.startswith("%(") and stripped.endswith(")s") and stripped[2:-2] in DOCS:
            indent = line[:len(line) - len(line.lstrip())]
            lines += [indent + part if part else part
                      for part in DOCS[stripped[2:-2]].split("\n")]
        else:
            lines.append(line)
    f.__doc__ = "\n".join(lines)
    return f
