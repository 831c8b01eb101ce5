"""Exact nearest-neighbour search of patch features against the memory bank, batched.

Candidates come from chunked matrix products (|q|^2 - 2 q.b + |b|^2: fast, bounded memory);
the reported distance of each query is then recomputed from the difference to its nearest
row, so it carries no cancellation error. Nothing is approximate: every bank row is
compared with every query (brute force, as faiss's IndexFlatL2, which is used instead when
asked for and installed; it is never required).
"""

from __future__ import annotations

import torch

#: elements of one query-chunk x bank-chunk distance block (2^24 float32 = 64 MiB)
BLOCK_ELEMENTS = 2 ** 24


def nearest(queries: torch.Tensor, bank: torch.Tensor, block_elements: int = BLOCK_ELEMENTS,
            backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """(distances Q, indices Q) of each of Q x D `queries`' nearest row in M x D `bank`
    (Euclidean). Processes blocks of at most `block_elements` pairs."""
    queries, bank = queries.float(), bank.float()
    if bank.shape[0] == 0:
        raise ValueError("nearest-neighbour search in an empty memory bank")
    if _tracing():  # ONNX export: every query in one block, so the graph holds for any batch size
        index = _whole_query_indices(queries, bank, block_elements)
    elif backend == "faiss":
        index = _faiss_indices(queries, bank)
    else:
        index = _torch_indices(queries, bank, block_elements)
    distances = (queries - bank[index]).norm(dim=1)
    return distances, index


def _torch_indices(queries: torch.Tensor, bank: torch.Tensor, block_elements: int) -> torch.Tensor:
    q_count, m_count = queries.shape[0], bank.shape[0]
    bank_chunk = max(1, min(m_count, block_elements))
    query_chunk = max(1, block_elements // bank_chunk)
    bank_norms = (bank * bank).sum(dim=1)
    out = torch.empty(q_count, dtype=torch.long, device=queries.device)
    for q0 in range(0, q_count, query_chunk):
        q = queries[q0:q0 + query_chunk]
        q_norms = (q * q).sum(dim=1, keepdim=True)
        best = torch.full((q.shape[0],), float("inf"), device=q.device)
        best_index = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        for m0 in range(0, m_count, bank_chunk):
            b = bank[m0:m0 + bank_chunk]
            squared = q_norms - 2.0 * (q @ b.T) + bank_norms[m0:m0 + bank_chunk]
            value, index = squared.min(dim=1)
            better = value < best  # strict: ties keep the lower bank row
            best = torch.where(better, value, best)
            best_index = torch.where(better, index + m0, best_index)
        out[q0:q0 + q.shape[0]] = best_index
    return out


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _whole_query_indices(queries: torch.Tensor, bank: torch.Tensor, block_elements: int) -> torch.Tensor:
    """`_torch_indices` for a traced graph (`logicad export`): the queries are never sliced by
    Python integers (the tracer would freeze the traced batch's chunk bounds and a larger batch
    would leave rows unsearched); only the bank, whose size is fixed, is chunked. Same candidates
    and tie rule (the lower bank row)."""
    m_count = bank.shape[0]
    bank_chunk = max(1, min(m_count, block_elements // max(int(queries.shape[0]), 1)))
    q_norms = (queries * queries).sum(dim=1, keepdim=True)
    bank_norms = (bank * bank).sum(dim=1)
    best, best_index = None, None
    for m0 in range(0, m_count, bank_chunk):
        squared = q_norms - 2.0 * (queries @ bank[m0:m0 + bank_chunk].T) + bank_norms[m0:m0 + bank_chunk]
        value, index = squared.min(dim=1)
        if best is None:
            best, best_index = value, index + m0
            continue
        better = value < best  # strict: ties keep the lower bank row
        best = torch.where(better, value, best)
        best_index = torch.where(better, index + m0, best_index)
    return best_index


def faiss_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def _faiss_indices(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Exact L2 search with faiss.IndexFlatL2 on the CPU (optional dependency)."""
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank.detach().cpu().contiguous().numpy())
    _, found = index.search(queries.detach().cpu().contiguous().numpy(), 1)
    return torch.from_numpy(found[:, 0]).long().to(queries.device)
