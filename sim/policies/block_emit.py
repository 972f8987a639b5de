"""The block schedule's op emission, as a compiled kernel over integer tables.

`_BlockBuilder` (block.py) decides which ops a (step, layer, GPU batch) item holds, as
templates of payloads; this kernel walks the items in FlexGen's program order and writes
every op's payload, item and dependencies into flat arrays. The walk is block.py's
program order, step for step (see that module's docstring):

    for each item i = (step, layer, GPU batch j):
        [sync]                      FlexGen's barrier (`step_barrier`)
        weight_load(layer + 1)      on GPU batch 0, one layer ahead
        store(i - 1)                one behind; then a cache load that waited for it
        load(i + 1)                 one ahead (deferred while it must wait for its store)
        compute(i)                  (recompute,) attention, FFN (, LM head); or the CPU-attention chain
    [sync] store(last item)

Dependencies are written as CSR arrays of sorted, distinct op ids. Templates reach the
kernel as tables indexed by template id; which template an item uses depends on its step,
GPU batch and layer class: `lt_of[t, first layer? 0 : 1, j]`, `ct_of[t, last layer? 1 : 0, j]`
and `st_of[t, j]` for the loads, compute and stores of item (t, layer, j).

- loads: `lt_ptr[t]:lt_ptr[t + 1]` indexes `lt_pay` (payload) and `lt_tok` (a token-id
  load, which reads nothing a store wrote); `lt_off[t]` = offsets of the load_kv,
  load_act and load_tokens op within the item's loads (-1: none);
- compute: `ct[t]` = (mode: 0 GPU attention / 1 CPU attention, recompute kind: 0 none /
  1 recompute_kv / 2 recompute_layer, then payloads: recompute, attention, qkv_proj,
  store_qkv, cpu_attention, load_attn_out, out_proj, ffn, lm_head; -1: none);
- stores: `st_has[t]` (0: the item has no store step, CPU attention appends K,V itself),
  `st_ptr[t]:st_ptr[t + 1]` indexes `st_pay`;
- weights: `w_pay`, the payload of every layer's streamed weight load (-1: none streamed);
- `rebuild_after_kv`: a K,V rebuild also waits for its item's K,V load (KVPR, see
  block.py's `BlockOptions`).

Runs compiled with numba, or as plain Python with the same results (see `sim.compiled`).
"""

from __future__ import annotations

import numpy as np

from ..compiled import jit

# columns of the compute table
CT_MODE, CT_REC_KIND, CT_REC, CT_ATTN, CT_QKV, CT_SENT, CT_CPU, CT_BACK, CT_OUT, CT_FFN, CT_LM = range(11)
CT_WIDTH = 11
REC_NONE, REC_KV, REC_LAYER = 0, 1, 2


@jit
def _put(buf, pos, vals, m):
    """Append the distinct values >= 0 of vals[:m], sorted, to buf at pos; returns the new pos
    (buf is sized for the most an op can have)."""
    start = pos
    for a in range(m):
        v = vals[a]
        if v < 0:
            continue
        # insertion into buf[start:pos], kept sorted and distinct
        q = pos
        while q > start and buf[q - 1] > v:
            q -= 1
        if q > start and buf[q - 1] == v:
            continue
        for r in range(pos, q, -1):
            buf[r] = buf[r - 1]
        buf[q] = v
        pos += 1
    return pos


@jit
def _sync_barrier(pay, pay_stream, since, nid, n_streams, last, barrier, nb):
    """A full barrier over ops [since, nid): the last op of each stream among them, sorted, into
    `barrier`; returns how many (or `nb` unchanged when no op was issued since the last one)."""
    found = 0
    for s in range(n_streams):
        last[s] = -1
    op = nid - 1
    while op >= since and found < n_streams:
        s = pay_stream[pay[op]]
        if last[s] < 0:
            last[s] = op
            found += 1
        op -= 1
    if found:
        nb = 0
        for s in range(n_streams):
            if last[s] >= 0:
                barrier[nb] = last[s]
                nb += 1
        barrier[:nb].sort()
    return nb


@jit
def emit_block(n_steps, L, k, barrier_on, rebuild_after_kv, w_pay, lt_of, lt_ptr, lt_pay, lt_tok, lt_off,
               ct_of, ct, st_of, st_has, st_ptr, st_pay, pay_stream, n_streams, n_ops):
    """(payload, layer, step, micro-batch, deps_ptr, deps_idx, after_ptr, after_idx) of every
    op, in issue order."""
    per_step = L * k
    n_items = n_steps * per_step
    n_layers = n_steps * L
    pay = np.empty(n_ops, np.int64)
    item = np.empty(n_ops, np.int64)  # the op's item, (step * L + layer) * k + micro-batch
    dptr = np.zeros(n_ops + 1, np.int64)
    aptr = np.zeros(n_ops + 1, np.int64)
    # at most: deps, the stores of one item or 4; after, k tails (a weight load, one per layer
    # and step) or an item's stores (a compute op) or one attention (a cache load), plus the
    # barrier (one op per stream). Sized per op kind: k x n_ops would not fit in memory with
    # hundreds of GPU batches (FlexGen's LP picks 1x430 for OPT-175B).
    st_most = 0
    for q in range(st_ptr.shape[0] - 1):
        st_most = max(st_most, st_ptr[q + 1] - st_ptr[q])
    most = k + n_streams + st_most + 4
    didx = np.empty(n_ops * (st_most + 4), np.int64)
    aidx = np.empty(n_ops * (st_most + 1 + n_streams) + n_layers * (k + n_streams), np.int64)
    nd = 0
    na = 0
    nid = 0  # the next op id
    # producers, by item or by layer index (t * L + layer); -1: none
    weights = np.full(n_layers, -1, np.int64)
    attention = np.zeros(n_items, np.int64)
    tail = np.zeros(n_items, np.int64)  # the ffn, or the LM head on the last layer
    ffn_of = np.zeros(n_items, np.int64)
    lm_of = np.full(n_items, -1, np.int64)
    rec_of = np.full(n_items, -1, np.int64)
    st_first = np.full(n_items, -1, np.int64)  # each item's stores: st_first[i] + [0, st_cnt[i]); -1: none yet
    st_cnt = np.zeros(n_items, np.int64)
    loads_first = np.zeros(n_items, np.int64)  # id of each item's first cache load
    pending = np.full(n_items, -1, np.int64)  # pending[x]: the item whose loads wait for store(x)
    n_pending = 0
    barrier = np.empty(n_streams, np.int64)  # FlexGen's sync(): the last op of each stream
    nb = 0
    since = 0
    last = np.empty(n_streams, np.int64)
    dv = np.empty(st_most + 4, np.int64)  # deps of one op
    av = np.empty(most, np.int64)  # after of one op
    am = 0

    # the initial weight load and load(0) share the loop's code: item -1 issues only
    # weight_load(0) and load(0)
    for i in range(-1, n_items):
        if i >= 0 and barrier_on:  # FlexGen: sync() ends every (layer, GPU batch) step
            nb = _sync_barrier(pay, pay_stream, since, nid, n_streams, last, barrier, nb)
            since = nid
        if i >= 0:
            t = i // per_step
            layer = (i // k) % L
            j = i % k
            li = t * L + layer
        else:
            t, layer, j, li = 0, 0, 0, -1
        # ---------------------------------------------------------------- weight_load(li + 1)
        if j == 0 and li + 1 < n_layers and w_pay >= 0:
            idx = li + 1
            # double buffer: overwrite the buffer of the layer two back once it is done
            am = 0
            if idx >= 2:
                for x in range((idx - 2) * k, (idx - 1) * k):
                    av[am] = tail[x]
                    am += 1
            for b in range(nb):
                av[am] = barrier[b]
                am += 1
            pay[nid] = w_pay
            item[nid] = idx * k
            dptr[nid + 1] = nd
            na = _put(aidx, na, av, am)
            aptr[nid + 1] = na
            weights[idx] = nid
            nid += 1
        # ---------------------------------------------------------------- store(i - 1), one behind
        x_load = -1  # an item whose loads to issue now
        if i >= 1:
            tpl = st_of[(i - 1) // per_step, (i - 1) % k]
            if st_has[tpl]:
                first = nid
                for q in range(st_ptr[tpl], st_ptr[tpl + 1]):
                    pay[nid] = st_pay[q]
                    item[nid] = i - 1
                    dv[0] = attention[i - 1]
                    nd = _put(didx, nd, dv, 1)
                    dptr[nid + 1] = nd
                    na = _put(aidx, na, barrier, nb)
                    aptr[nid + 1] = na
                    nid += 1
                st_first[i - 1] = first
                st_cnt[i - 1] = nid - first
            if n_pending and pending[i - 1] >= 0:
                x_load = pending[i - 1]
                pending[i - 1] = -1
                n_pending -= 1
        # ---------------------------------------------------------------- load(x): deferred, then one ahead
        for phase in range(2):
            if phase == 0:
                x = x_load
            else:
                x = -1
                if i + 1 < n_items:
                    if (i + 1) // per_step == 0 or st_first[i + 1 - per_step] >= 0:
                        x = i + 1
                    else:
                        pending[i + 1 - per_step] = i + 1
                        n_pending += 1
            if x < 0:
                continue
            tpl = lt_of[x // per_step, 0 if (x // k) % L == 0 else 1, x % k]
            if lt_ptr[tpl] == lt_ptr[tpl + 1]:
                continue
            loads_first[x] = nid
            am = 0
            if x >= 2:
                av[am] = attention[x - 2]
                am += 1
            for b in range(nb):
                av[am] = barrier[b]
                am += 1
            w_first = st_first[x - per_step] if x >= per_step else -1  # the previous step's store
            w_cnt = st_cnt[x - per_step] if x >= per_step else 0
            for q in range(lt_ptr[tpl], lt_ptr[tpl + 1]):
                pay[nid] = lt_pay[q]
                item[nid] = x
                if not lt_tok[q] and w_first >= 0:
                    for r in range(w_cnt):
                        dv[r] = w_first + r
                    nd = _put(didx, nd, dv, w_cnt)
                dptr[nid + 1] = nd
                na = _put(aidx, na, av, am)
                aptr[nid + 1] = na
                nid += 1
        if i < 0:
            continue
        # ---------------------------------------------------------------- compute(i)
        c = ct[ct_of[t, 1 if layer == L - 1 else 0, j]]
        w = weights[li]
        hidden_in = -1
        if i >= k:
            hidden_in = ffn_of[i - k] if layer > 0 else lm_of[i - k]
        # drained: the store two items back has emptied its output buffer
        am = 0
        if i >= 2 and st_first[i - 2] >= 0:
            for r in range(st_cnt[i - 2]):
                av[am] = st_first[i - 2] + r
                am += 1
        for b in range(nb):
            av[am] = barrier[b]
            am += 1
        if c[CT_MODE] == 1:  # CPU attention: qkv_proj -> store_qkv -> cpu_attention -> load_attn_out -> out_proj
            qkv = nid
            sent, back, attn = qkv + 1, qkv + 3, qkv + 4
            for q in range(5):
                pay[nid] = c[CT_QKV + q]
                item[nid] = i
                if q == 0:
                    dv[0] = w
                    dv[1] = hidden_in
                    m = 2
                elif q == 4:
                    dv[0] = w
                    dv[1] = back
                    m = 2
                else:
                    dv[0] = nid - 1
                    m = 1
                nd = _put(didx, nd, dv, m)
                dptr[nid + 1] = nd
                na = _put(aidx, na, av, am) if q == 0 else _put(aidx, na, barrier, nb)
                aptr[nid + 1] = na
                nid += 1
            st_first[i] = sent
            st_cnt[i] = 1
        else:
            tpl = lt_of[t, 0 if layer == 0 else 1, j]
            base = loads_first[i]
            rec = -1
            if c[CT_REC] >= 0:
                dv[0] = w
                dv[2] = -1
                if c[CT_REC_KIND] == REC_KV:
                    dv[1] = base + lt_off[tpl, 1] if lt_off[tpl, 1] >= 0 else -1
                    if rebuild_after_kv and lt_off[tpl, 0] >= 0:  # KVPR: see BlockOptions
                        dv[2] = base + lt_off[tpl, 0]
                else:  # recompute_layer: re-run this layer for the recomputed prefix
                    if layer:
                        dv[1] = rec_of[i - k]
                    else:
                        dv[1] = base + lt_off[tpl, 2] if lt_off[tpl, 2] >= 0 else -1
                    rec_of[i] = nid
                rec = nid
                pay[nid] = c[CT_REC]
                item[nid] = i
                nd = _put(didx, nd, dv, 3)
                dptr[nid + 1] = nd
                na = _put(aidx, na, barrier, nb)
                aptr[nid + 1] = na
                nid += 1
            attn = nid
            pay[nid] = c[CT_ATTN]
            item[nid] = i
            dv[0] = w
            dv[1] = hidden_in
            dv[2] = rec
            dv[3] = base + lt_off[tpl, 0] if lt_off[tpl, 0] >= 0 else -1
            nd = _put(didx, nd, dv, 4)
            dptr[nid + 1] = nd
            na = _put(aidx, na, av, am)
            aptr[nid + 1] = na
            nid += 1
        attention[i] = attn
        ffn_of[i] = nid
        pay[nid] = c[CT_FFN]
        item[nid] = i
        dv[0] = w  # the weights arrived before attention was issued
        dv[1] = attn
        nd = _put(didx, nd, dv, 2)
        dptr[nid + 1] = nd
        na = _put(aidx, na, barrier, nb)
        aptr[nid + 1] = na
        nid += 1
        if c[CT_LM] >= 0:
            lm_of[i] = nid
            tail[i] = nid
            pay[nid] = c[CT_LM]
            item[nid] = i
            dv[0] = nid - 1
            nd = _put(didx, nd, dv, 1)
            dptr[nid + 1] = nd
            na = _put(aidx, na, barrier, nb)
            aptr[nid + 1] = na
            nid += 1
        else:
            tail[i] = nid - 1
    # ---------------------------------------------------------------- store(last item), after the final sync
    if barrier_on:
        nb = _sync_barrier(pay, pay_stream, since, nid, n_streams, last, barrier, nb)
    tpl = st_of[n_steps - 1, k - 1]
    if st_has[tpl]:
        for q in range(st_ptr[tpl], st_ptr[tpl + 1]):
            pay[nid] = st_pay[q]
            item[nid] = n_items - 1
            dv[0] = attention[n_items - 1]
            nd = _put(didx, nd, dv, 1)
            dptr[nid + 1] = nd
            na = _put(aidx, na, barrier, nb)
            aptr[nid + 1] = na
            nid += 1
    if n_pending:
        raise RuntimeError("a cache load was never issued")
    item = item[:nid]
    return (pay[:nid], (item // k) % L, item // per_step, item % k, dptr[:nid + 1], didx[:nd], aptr[:nid + 1],
            aidx[:na])
