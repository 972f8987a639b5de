"""Compiled kernels over a schedule's arrays: the list-scheduling replay (with the critical
path) and the peak of GPU memory in use. See `compiled` for how they run (numba, or the
same code as plain Python); `engine` and `metrics` call them.
"""

from __future__ import annotations

import numpy as np

from .compiled import jit


@jit
def list_replay_kernel(stream, dur, deps_ptr, deps_idx, after_ptr, after_idx, n_streams):
    """(end ns per op, critical path ns) of the SimPy model's timeline.

    Op i starts when its stream's previous op and every op it waits for (deps and after,
    CSR: `deps_idx[deps_ptr[i]:deps_ptr[i + 1]]`) have ended: the SimPy model's rule, since
    ops are in topological order and each stream's queue is in op order. The critical path
    (longest chain over the same edges, streams ignored) comes out of the same pass."""
    n = stream.shape[0]
    end = np.empty(n, np.int64)
    chain = np.empty(n, np.int64)  # longest dependency chain ending with each op
    free = np.zeros(n_streams, np.int64)
    crit = 0
    for i in range(n):
        s = stream[i]
        t = free[s]
        c = 0
        for p in range(deps_ptr[i], deps_ptr[i + 1]):
            w = deps_idx[p]
            if end[w] > t:
                t = end[w]
            if chain[w] > c:
                c = chain[w]
        for p in range(after_ptr[i], after_ptr[i + 1]):
            w = after_idx[p]
            if end[w] > t:
                t = end[w]
            if chain[w] > c:
                c = chain[w]
        d = dur[i]
        t += d
        end[i] = t
        free[s] = t
        c += d
        chain[i] = c
        if c > crit:
            crit = c
    return end, crit


@jit
def gpu_events_kernel(start, end, deps_ptr, deps_idx, gpu_bytes, workspace_bytes):
    """(key, delta) of every change of GPU memory in use, as `metrics.memory_occupancy`
    counts them: an op's output lives from its start until its last data consumer ends, its
    workspace while it runs. key = 2 x time, + 1 for an allocation, so that sorted by key
    the frees of an instant come before its allocations (see `metrics.peak_memory_bytes`)."""
    n = start.shape[0]
    last_use = end.copy()
    m = 0
    for i in range(n):
        e = end[i]
        for p in range(deps_ptr[i], deps_ptr[i + 1]):
            src = deps_idx[p]
            if e > last_use[src]:
                last_use[src] = e
        if gpu_bytes[i] != 0:
            m += 2
        if workspace_bytes[i] != 0:
            m += 2
    key = np.empty(m, np.int64)  # 2 * time, + 1 for an allocation
    delta = np.empty(m, np.int64)
    q = 0
    for i in range(n):
        g = gpu_bytes[i]
        if g != 0:
            key[q] = 2 * start[i] + 1
            delta[q] = g
            key[q + 1] = 2 * last_use[i]
            delta[q + 1] = -g
            q += 2
        w = workspace_bytes[i]
        if w != 0:
            key[q] = 2 * start[i] + 1
            delta[q] = w
            key[q + 1] = 2 * end[i]
            delta[q + 1] = -w
            q += 2
    return key, delta
