"""The k nearest training questions of each query, as the full float32 sweep + argpartition finds them, with
less memory read.

The exam model's bank is 11,443 x 384 float32 (17.6 MB): one query's sweep is memory-bound, about 1 ms on
an idle core and 2.5-6.5 ms at load average 6 on 2 cores. Inside `fastpath.inference()` the bank is first
searched as 8-bit integers (4.4 MB) by ONNX Runtime's integer matmul; a rigorous per-row bound on the
quantisation error (Cauchy-Schwarz on the exactly known residuals of row and query) leaves the rows that
may be among the k nearest, usually a few dozen, and only those are compared in float32. When the k-th
and (k+1)-th of them are within 1e-6 (ties: MMLU has 716 moral-scenario questions with one 32-token
prefix, so one vector) the query takes the full sweep, so the chosen neighbours are always the full
sweep's (tests/test_fastpath.py compares them).
"""

from __future__ import annotations

import weakref

import numpy as np

from routers.two_stage import fastpath

MIN_ROWS = 2048  # a smaller bank is swept in full: it is cheaper than the integer pass
MAX_QUERIES = 8  # more queries share one float32 sweep (a matrix product): 64 took 15 ms that way, 23.5 ms here
MARGIN = 1e-4  # covers the float32 rounding of the full sweep (at most 384 * 2**-24 per similarity)
GAP = 1e-6  # k-th and (k+1)-th candidates closer than this: the full sweep decides
_indexes: dict[int, "Int8Bank"] = {}  # by id of the bank array; an entry leaves with its array


def full(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities) of the k most similar rows of `bank` for each query: the reference sweep."""
    sims = queries @ bank.T
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return idx, np.take_along_axis(sims, idx, 1)


def nearest(bank: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """full(), through the integer index inside a routing call of a few queries on a large bank."""
    if not fastpath.in_inference() or len(bank) < MIN_ROWS or len(bank) <= k or len(queries) > MAX_QUERIES:
        return full(bank, queries, k)
    candidates = _index(bank).candidates(queries, k)
    if candidates is None:
        return full(bank, queries, k)
    idx = np.empty((len(queries), k), dtype=np.int64)
    top = np.empty((len(queries), k), dtype=np.result_type(bank, queries))
    redo = []
    for i, cand in enumerate(candidates):
        sims = bank[cand] @ queries[i]
        order = np.argpartition(-sims, [k - 1, k]) if len(cand) > k else np.arange(k)
        if len(cand) > k and sims[order[k - 1]] - sims[order[k]] < GAP:
            redo.append(i)
            continue
        idx[i], top[i] = cand[order[:k]], sims[order[:k]]
    if redo:
        idx[redo], top[redo] = full(bank, queries[redo], k)
    return idx, top


class Int8Bank:
    """The bank as int8 rows (one scale each), searched by DynamicQuantizeLinear + MatMulInteger (the weights
    stored as uint8 around 128: ONNX Runtime's u8u8 kernels cannot saturate, as u8s8 ones on AVX2 can)."""

    def __init__(self, bank: np.ndarray):
        rows = bank.astype(np.float64)
        self.bank = weakref.ref(bank)
        self.scale = np.abs(rows).max(axis=1) / 127.0
        self.scale[self.scale == 0] = 1.0
        ints = np.round(rows / self.scale[:, None])
        self.residual = np.linalg.norm(rows - ints * self.scale[:, None], axis=1)
        self.norm = np.linalg.norm(rows, axis=1)
        self.session = _session((ints + 128).astype(np.uint8))

    def candidates(self, queries: np.ndarray, k: int) -> list[np.ndarray] | None:
        """Per query, the rows whose similarity may reach the k-th largest: upper bound >= k-th largest lower bound
        (None: the queries cannot be quantised, e.g. all zero)."""
        dots, q_int, q_scale, q_zero = self.session.run(None, {"q": np.ascontiguousarray(queries, dtype=np.float32)})
        if not (np.isfinite(q_scale) and q_scale > 0):
            return None
        q_hat = (q_int.astype(np.float64) - float(q_zero)) * float(q_scale)
        q_err = np.linalg.norm(queries.astype(np.float64) - q_hat, axis=1)
        approx = dots * (float(q_scale) * self.scale)
        slack = np.linalg.norm(q_hat, axis=1)[:, None] * self.residual + q_err[:, None] * self.norm + MARGIN
        kth = -np.partition(-(approx - slack), k - 1, axis=1)[:, k - 1]
        return [np.nonzero(row >= bar)[0] for row, bar in zip(approx + slack, kth)]


def _index(bank: np.ndarray) -> Int8Bank:
    """One index per bank array, built on first use (about 0.1 s for the exam bank), dropped with the bank's model."""
    index = _indexes.get(id(bank))
    if index is None or index.bank() is not bank:
        index = Int8Bank(bank)
        _indexes[id(bank)] = index
        weakref.finalize(bank, _indexes.pop, id(bank), None)
    return index


def _session(weights: np.ndarray):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    dim = weights.shape[1]
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["q"], ["q_int", "q_scale", "q_zero"]),
         helper.make_node("MatMulInteger", ["q_int", "bank_t", "q_zero", "bank_zero"], ["dots"])],
        "nearest", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [None, dim])],
        [helper.make_tensor_value_info("dots", TensorProto.INT32, [None, len(weights)]),
         helper.make_tensor_value_info("q_int", TensorProto.UINT8, [None, dim]),
         helper.make_tensor_value_info("q_scale", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("q_zero", TensorProto.UINT8, [])],
        [numpy_helper.from_array(np.ascontiguousarray(weights.T), "bank_t"),
         numpy_helper.from_array(np.array(128, dtype=np.uint8), "bank_zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
