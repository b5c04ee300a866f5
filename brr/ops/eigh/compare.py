"""Comparing eigendecompositions that are only defined up to sign and rotation within eigenspaces."""

from __future__ import annotations

import numpy as np


def eigenspace_projectors(values, vectors, cluster_tol: float) -> np.ndarray:
    """Per eigenvalue, the orthogonal projector onto the eigenspace of its cluster.

    ``values`` (..., n) ascending and ``vectors`` (..., n, n) with eigenvectors as columns (numpy
    arrays or anything ``np.asarray`` takes). Consecutive eigenvalues closer than ``cluster_tol``
    form one cluster (chained); entry [..., k, :, :] is sum_j v_j v_j^T over the j in k's cluster,
    which does not depend on the signs or on the basis chosen inside the cluster. Returns float64
    (..., n, n, n).

    To compare two implementations, pass the *reference* values with each side's vectors, so that
    both sides are clustered identically even where an implementation's rounding would split or
    merge a cluster at the threshold.
    """
    values = np.asarray(values, dtype=np.float64)
    vectors = np.asarray(vectors, dtype=np.float64)
    new_cluster = np.diff(values, axis=-1) > cluster_tol
    cluster = np.concatenate(
        [np.zeros((*values.shape[:-1], 1), dtype=np.int64), np.cumsum(new_cluster, axis=-1)], axis=-1
    )
    same = (cluster[..., :, None] == cluster[..., None, :]).astype(np.float64)
    return np.einsum("...kj,...aj,...bj->...kab", same, vectors, vectors)
