"""Independent pieces of one group's selection run side by side on the machine's cores.

The selection runs with one BLAS thread (:data:`onnx_subprune.choose.SELECT_THREADS`): its greedy
steps are many small products that BLAS threads only slow down. But the pieces of a selection are
independent: the consumers of a group (their greedy states, refits), the cross-validation folds,
and, within one wide consumer's greedy step, the channel ranges of its gains and updates. NumPy,
SciPy and BLAS release the GIL while they work, so a few Python threads, each calling the
one-threaded BLAS, keep the other cores busy. Results come back in the order of the items and
every caller combines them in that order, so folds and consumers give bit for bit what they give
one after the other (channel ranges: the same picks, products rounded per range).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import ContextManager, TypeVar

from threadpoolctl import ThreadpoolController

Item = TypeVar("Item")
Result = TypeVar("Result")

WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Threads that run the pieces (at most 4: each holds a fold's statistics, up to d x d floats)."""

SHARED_ENTRIES = 1 << 20
"""Pieces working on fewer array entries than this each (8 MiB of float64), on average, run one
after the other: their Python-level steps would contend for the GIL (on the architectures of
models/arch, selection took 30-50% longer when such pieces were shared)."""

WIDE_FLOPS = 2e9
"""A single dense product or factorization of more flops than this, made outside the pieces
(nothing else runs then), uses every core's BLAS thread (:func:`all_cores`)."""

_state = threading.local()
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_controller: ThreadpoolController | None = None


def each(function: Callable[[Item], Result], items: Iterable[Item], entries: float = math.inf) -> list[Result]:
    """``[function(item) for item in items]``, computed by up to :data:`WORKERS` threads.

    ``entries``: how many array entries the pieces work on in all; with fewer than
    :data:`SHARED_ENTRIES` per piece, handing them to threads costs more than it saves. Serial
    then, for a single item, with one worker, and inside a piece already running in a worker
    (nested calls never wait on the pool they run in). An exception of any piece is raised here.
    """
    items = list(items)
    if (WORKERS < 2 or len(items) < 2 or entries < SHARED_ENTRIES * len(items)
            or getattr(_state, "inside", False)):
        return [function(item) for item in items]
    return list(_pool().map(_inside(function), items))


def even_ranges(total: int, count: int) -> list[slice]:
    """At most ``count`` contiguous, nearly equal ranges covering ``range(total)``, none empty
    unless ``total`` is 0."""
    count = max(1, min(count, total))
    bounds = [round(total * i / count) for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def _inside(function: Callable[[Item], Result]) -> Callable[[Item], Result]:
    def run(item: Item) -> Result:
        _state.inside = True
        try:
            return function(item)
        finally:
            _state.inside = False

    return run


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="subprune-select")
        return _executor


def all_cores(flops: float) -> ContextManager:
    """Context in which BLAS uses every core, for one large operation of ``flops`` (above
    :data:`WIDE_FLOPS`) made outside :func:`each`'s pieces; otherwise it changes nothing (the
    BLAS thread count is global to the process, and :func:`each` returns only when its pieces
    are done, so outside them nothing else is running)."""
    cores = os.cpu_count() or 1
    if flops < WIDE_FLOPS or cores < 2 or getattr(_state, "inside", False):
        return contextlib.nullcontext()
    global _controller
    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
    return _controller.limit(limits=cores, user_api="blas")
