"""Compiled kernels over a schedule's arrays: the list-scheduling replay (with the critical
path) and the one pass `metrics.run_metrics` makes over a replay (busy time, link bytes,
prefill end, peak of GPU memory in use). See `compiled` for how they run (numba, or the
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
def metrics_kernel(stream, dur, start, end, step, payload, pay_gpu, pay_ws, pay_link, pay_in_place, deps_ptr,
                   deps_idx, n_streams):
    """One pass over a replayed schedule for `metrics.run_metrics`: (busy ns per stream, link
    bytes per stream, end of the last step-0 compute op (-1: none), end of the last step-0
    op, the peak rise of GPU memory in use above the static bytes).

    GPU memory as `metrics.memory_occupancy` counts it: an op's output lives from its start
    until its last data consumer ends (or starts, where the consumer overwrites it in place:
    both payloads have the same non-zero `pay_in_place` code), its workspace while it runs, and what is freed and
    allocated at one instant counts as one change. Every change happens at an op's start
    (allocations) or end (frees), and on each stream starts and ends both grow in op order,
    so walking the streams' queues side by side visits the instants in time order, with no
    sort: at each instant, all frees, then all allocations, then the level is a candidate
    for the peak."""
    n = stream.shape[0]
    busy = np.zeros(n_streams, np.int64)
    link = np.zeros(n_streams, np.int64)
    count = np.zeros(n_streams + 1, np.int64)
    prefill_compute = -1
    prefill_any = -1
    last_use = end.copy()
    freed_by = np.arange(n)  # the op whose end (or start, where freed_at_start) frees each op's output
    freed_at_start = np.zeros(n, np.bool_)
    for i in range(n):
        s = stream[i]
        busy[s] += dur[i]
        link[s] += pay_link[payload[i]]
        count[s + 1] += 1
        e = end[i]
        if step[i] == 0:
            if e > prefill_any:
                prefill_any = e
            if s == 0 and e > prefill_compute:
                prefill_compute = e
        code = pay_in_place[payload[i]]
        for p in range(deps_ptr[i], deps_ptr[i + 1]):
            src = deps_idx[p]
            in_place = code != 0 and pay_in_place[payload[src]] == code
            use = start[i] if in_place else e
            if use > last_use[src]:
                last_use[src] = use
                freed_by[src] = i
                freed_at_start[src] = in_place
    alloc = np.empty(n, np.int64)
    free = np.zeros(n, np.int64)
    free_on_start = np.zeros(n, np.int64)  # freed when the op starts, before it allocates
    for i in range(n):
        ws = pay_ws[payload[i]]
        alloc[i] = pay_gpu[payload[i]] + ws
        free[i] += ws
        if freed_at_start[i]:
            free_on_start[freed_by[i]] += pay_gpu[payload[i]]
        else:
            free[freed_by[i]] += pay_gpu[payload[i]]
    # each stream's ops, in op order
    for s in range(n_streams):
        count[s + 1] += count[s]
    queue = np.empty(n, np.int64)
    fill = count[:n_streams].copy()
    for i in range(n):
        queue[fill[stream[i]]] = i
        fill[stream[i]] += 1
    next_end = count[:n_streams].copy()
    next_start = count[:n_streams].copy()
    level = 0
    peak = 0
    while True:
        t = -1
        for s in range(n_streams):
            if next_end[s] < count[s + 1]:
                e = end[queue[next_end[s]]]
                if t < 0 or e < t:
                    t = e
            if next_start[s] < count[s + 1]:
                e = start[queue[next_start[s]]]
                if t < 0 or e < t:
                    t = e
        if t < 0:
            break
        for s in range(n_streams):
            while next_end[s] < count[s + 1] and end[queue[next_end[s]]] == t:
                level -= free[queue[next_end[s]]]
                next_end[s] += 1
        for s in range(n_streams):
            while next_start[s] < count[s + 1] and start[queue[next_start[s]]] == t:
                level += alloc[queue[next_start[s]]] - free_on_start[queue[next_start[s]]]
                next_start[s] += 1
        if level > peak:
            peak = level
    return busy, link, prefill_compute, prefill_any, peak
