"""Distance from each candidate embedding to its nearest labelled one, through FAISS (faiss-cpu), the
maintained library for nearest-neighbour search, rather than a hand-written search.

Exact (IndexFlatL2) while the work N * M stays moderate; above EXACT_LIMIT pairs an HNSW graph
(IndexHNSWFlat) answers approximately, which is what keeps a fleet-scale selection (10^6 candidates
against 10^5 labelled frames) inside a minute on two cores. bench/selection_scale.py measures both.
"""
from __future__ import annotations

import numpy as np

from segxal.errors import InvalidInput

EXACT_LIMIT = 2e10  # candidate x labelled pairs searched exactly; above it, HNSW
_HNSW_M = 32  # graph degree: FAISS's usual setting for recall > 0.95 at ef_search 64
_HNSW_EF_SEARCH = 64


def nearest_distances(queries: np.ndarray, base: np.ndarray, exact: bool | None = None) -> np.ndarray:
    """L2 distance from every query row to its nearest base row.

    Args:
        queries: float32 [N, D].
        base: float32 [M, D], M >= 1.
        exact: force exact (True) or HNSW (False) search; None: exact up to EXACT_LIMIT pairs.

    Returns:
        float32 [N] distances (not squared).

    Raises:
        InvalidInput: dimensions differ, empty base, or non-finite values.
    """
    import faiss  # imported here: only selections with a diversity term pay for loading it

    q = np.ascontiguousarray(queries, dtype=np.float32)
    b = np.ascontiguousarray(base, dtype=np.float32)
    if q.ndim != 2 or b.ndim != 2 or q.shape[1] != b.shape[1]:
        raise InvalidInput(f"embeddings must be [N, D] and [M, D] with one D, got {q.shape} and {b.shape}")
    if len(b) == 0:
        raise InvalidInput("nearest distances: the labelled set is empty")
    if not (np.isfinite(q).all() and np.isfinite(b).all()):
        raise InvalidInput("embeddings hold NaN or infinite values")
    d = q.shape[1]
    if exact is None:
        exact = float(len(q)) * len(b) <= EXACT_LIMIT
    if exact:
        index = faiss.IndexFlatL2(d)
    else:
        index = faiss.IndexHNSWFlat(d, _HNSW_M)
        index.hnsw.efSearch = _HNSW_EF_SEARCH
    index.add(b)
    sq, _ = index.search(q, 1)  # [N, 1] squared L2
    return np.sqrt(np.maximum(sq[:, 0], 0.0)).astype(np.float32)
