"""Adjacency assembly, Laplacian positional encoding and the dense SSGConv against PyG."""

import pytest
import torch

from brr.model import resolve_config
from brr.model.adjacency import AdjacencyAssembly
from brr.model.graph import DenseSSGConv, propagation_matrix
from brr.model.positional_encoding import LaplacianPE, normalised_laplacian
from brr.montage import pair_indices


def test_pair_order_is_row_major():
    pairs = pair_indices()
    assert len(pairs) == 171 and pairs[0] == (0, 1) and pairs[17] == (0, 18) and pairs[18] == (1, 2)


def random_weights(b=2, t=6, isolated=(4, 11)):
    w = torch.rand(b, 171, t) + 0.01
    for e, (i, j) in enumerate(pair_indices()):
        if i in isolated or j in isolated:
            w[:, e] = 1e-6  # below the threshold: these nodes end up isolated
    return w


def test_adjacency_invariants():
    cfg = resolve_config("v3-small")
    weights = random_weights()
    adjacency = AdjacencyAssembly(cfg)(weights)
    assert adjacency.shape == (2, 6, 19, 19)
    assert torch.equal(adjacency, adjacency.transpose(-1, -2))
    # Rebuild the pre-symmetrisation matrix: each row keeps exactly its top-k entries above threshold.
    dense = torch.zeros(2, 6, 19, 19)
    for e, (i, j) in enumerate(pair_indices()):
        dense[:, :, i, j] = dense[:, :, j, i] = weights[:, e]
    kept = torch.zeros_like(dense)
    values, index = dense.topk(cfg.edge_top_k, dim=-1)
    kept.scatter_(-1, index, values)
    kept = torch.where(kept > cfg.edge_threshold, kept, 0.0)
    off_diagonal = adjacency - torch.diag_embed(torch.diagonal(adjacency, dim1=-2, dim2=-1))
    torch.testing.assert_close(off_diagonal, 0.5 * (kept + kept.transpose(-1, -2)))
    assert ((kept > 0).sum(-1)[..., [i for i in range(19) if i not in (4, 11)]] == cfg.edge_top_k).all()
    # Self loops exactly on the isolated nodes, with weight 1.
    diagonal = torch.diagonal(adjacency, dim1=-2, dim2=-1)
    expected = torch.zeros(19)
    expected[[4, 11]] = 1.0
    assert torch.equal(diagonal, expected.expand_as(diagonal))


def test_dynamic_pe_is_orthonormal_sign_fixed_and_held():
    cfg = resolve_config("v3-small")
    adjacency = AdjacencyAssembly(cfg)(random_weights(t=cfg.steps))
    pe = LaplacianPE(cfg)(adjacency)
    assert pe.shape == (2, cfg.steps, 19, cfg.k_eigenvectors)
    gram = pe.transpose(-1, -2) @ pe
    torch.testing.assert_close(gram, torch.eye(cfg.k_eigenvectors).expand_as(gram), atol=1e-5, rtol=0)
    assert (pe.sum(-2) >= -1e-6).all()
    interval = cfg.semi_dynamic_interval
    assert torch.equal(pe[:, 0], pe[:, interval - 1]) and not torch.equal(pe[:, 0], pe[:, interval])
    # The columns span the eigenspaces of the smallest eigenvalues of the step's Laplacian.
    laplacian = normalised_laplacian(adjacency[:, 0], cfg.degree_clamp, cfg.laplacian_shift)
    values = torch.linalg.eigvalsh(laplacian)
    rayleigh = torch.diagonal(pe[:, 0].transpose(-1, -2) @ laplacian @ pe[:, 0], dim1=-2, dim2=-1)
    torch.testing.assert_close(rayleigh, values[:, : cfg.k_eigenvectors], atol=1e-5, rtol=0)


def test_static_pe_is_reproducible_and_from_the_montage():
    cfg = resolve_config({"base": "v3-small", "use_dynamic_pe": False})
    first, second = LaplacianPE(cfg), LaplacianPE(cfg)
    assert torch.equal(first.static_pe, second.static_pe)
    pe = first(torch.zeros(1, cfg.steps, 19, 19))
    assert torch.equal(pe[0, 0], first.static_pe)
    # The montage graph is connected: the first eigenvector is proportional to sqrt(degree).
    assert (first.static_pe[:, 0] > 0).all()


def dense_to_pyg(adjacency):
    from torch_geometric.utils import dense_to_sparse

    return dense_to_sparse(adjacency)


@pytest.mark.parametrize("alpha, hops", [(0.05, 2), (0.3, 3)])
def test_dense_ssgconv_equals_torch_geometric(alpha, hops):
    from torch_geometric.nn import SSGConv

    torch.manual_seed(0)
    n_graphs, n, f_in, f_out = 5, 19, 12, 7
    adjacency = torch.rand(n_graphs, n, n) * (torch.rand(n_graphs, n, n) < 0.3)
    adjacency = 0.5 * (adjacency + adjacency.transpose(-1, -2))
    adjacency.diagonal(dim1=-2, dim2=-1).zero_()
    adjacency[0, 3] = adjacency[0, :, 3] = 0.0  # isolated node without a self loop
    adjacency[1, 7] = adjacency[1, :, 7] = 0.0
    adjacency[1, 7, 7] = 1.0  # isolated node with the self loop the assembly adds
    adjacency[2, 5, 5] = 0.7  # an existing self loop keeps its weight
    x = torch.randn(n_graphs, n, f_in)
    dense = DenseSSGConv(f_in, f_out, alpha, hops)
    pyg = SSGConv(f_in, f_out, alpha=alpha, K=hops)
    pyg.lin.load_state_dict(dense.lin.state_dict())
    out = dense(x, propagation_matrix(adjacency))
    for g in range(n_graphs):
        edge_index, edge_weight = dense_to_pyg(adjacency[g])
        expected = pyg(x[g], edge_index, edge_weight)
        torch.testing.assert_close(out[g], expected, atol=1e-5, rtol=1e-5)


def test_dense_ssgconv_matches_pyg_on_a_directed_graph():
    from torch_geometric.nn import SSGConv

    adjacency = torch.rand(19, 19) * (torch.rand(19, 19) < 0.4)
    adjacency.diagonal().zero_()
    x = torch.randn(19, 4)
    dense = DenseSSGConv(4, 3, 0.05, 2)
    pyg = SSGConv(4, 3, alpha=0.05, K=2)
    pyg.lin.load_state_dict(dense.lin.state_dict())
    edge_index, edge_weight = dense_to_pyg(adjacency)
    torch.testing.assert_close(dense(x[None], propagation_matrix(adjacency[None]))[0],
                               pyg(x, edge_index, edge_weight), atol=1e-5, rtol=1e-5)
