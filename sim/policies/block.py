"""FlexGen's block schedule, shared by every offloading policy.

Program order, as FlexGen issues work: for each step (prefill, then each decode
step), for each layer, for each GPU batch (micro-batch):

1. on GPU batch 0, prefetch the next layer's streamed weights (double-buffered);
2. load the next micro-batch's cache (K,V / activations / token ids), one ahead;
3. run this micro-batch's compute (recompute, attention, FFN, LM head);
4. store the previous micro-batch's new token state, one behind.

Buffers are double-buffered: a load waits (`after`) until the buffer it reuses has
been consumed, and attention waits until the store two micro-batches back has
drained its output buffer.

Policy options on top (see `BlockOptions`): the `flexgen` policy adds FlexGen's
full barrier after every (layer, GPU batch) step (`torch.cuda.synchronize`), places
weights as whole tensors, and moves K,V to and from unpinned host memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import costs
from ..memory import attention_context_bytes, check_plan, plan_from_sizes
from ..schedule import KIND_STREAM, LINK_KINDS, OpKind, Schedule, ScheduleMeta, Stream
from ..specs import PointSpec, PolicyKind
from .placement import flexgen_gpu_weight_percent
from .registry import scheme_for
from .schemes import CacheScheme

Item = tuple[int, int, int]  # (step, layer, micro_batch)

#: link kinds that move cache state (K,V, activations) rather than weights or hidden states
CACHE_LINK_KINDS = frozenset({OpKind.load_kv, OpKind.load_act, OpKind.store_kv, OpKind.store_act})


@dataclass(frozen=True)
class BlockOptions:
    """How a policy runs the block schedule beyond its cache scheme."""

    step_barrier: bool = False  # full sync after every (layer, GPU batch) step (FlexGen)
    cache_pinned: bool = True  # host K,V and activations in pinned memory
    #: the K,V rebuild of a layer starts only once all of that layer's cache (its K,V too) has
    #: arrived, so it overlaps the next layer's prefetch, never its own K,V transfer (KVPR)
    rebuild_after_kv: bool = False


def block_options(point: PointSpec) -> BlockOptions:
    pol = point.policy
    if pol.kind is PolicyKind.flexgen:
        return BlockOptions(step_barrier=True, cache_pinned=pol.cache_pinned and pol.pinned)
    if pol.kind is PolicyKind.kvpr:
        # KVPR's code (github.com/chaoyij/KVPR, read at AndreaLeang/KVPR 1712a52) rebuilds a
        # layer's K,V only after its whole cache has arrived, in both of its paths:
        # - FlexGen fork, `flexgen/flex_opt.py` `OptLM.generation_loop_overlap_single_batch`
        #   (and `_multi_batch`): `load_hidden_compute(j+1)` and `load_cache(j+1)` are issued
        #   on their own streams before `compute_layer(j)`, and `sync()`
        #   (`torch.cuda.synchronize`) ends every (sub)layer, so `SelfAttention.forward`'s
        #   rebuild of layer j (`F.layer_norm` + `F.linear(w_k/w_v)`) runs after layer j's
        #   activations and K,V both landed, overlapping only the prefetch for j+1;
        # - HF path, `transformers/src/transformers/cache_utils.py`
        #   `OffloadedStaticCache.update`: `default_stream.wait_stream(_prefetch_stream)`
        #   (which copied K, V, then the activations, `_prefetch_layer_in_context`) before
        #   `k_proj/v_proj(recomputed_activations)`, then `_prefetch_layer(layer_idx + 1)`.
        # Its weights are prefetched a (sub)layer ahead like FlexGen's (`load_weight(i, j+1)`);
        # `--load-partial-weight` (W_K, W_V, LN on a second stream) gains nothing behind the
        # per-(sub)layer sync, so the layer's weights are one load here.
        return BlockOptions(step_barrier=pol.step_barrier, cache_pinned=pol.pinned, rebuild_after_kv=True)
    if pol.kind is PolicyKind.hybridserve:
        return BlockOptions(step_barrier=pol.step_barrier, cache_pinned=pol.pinned)
    return BlockOptions(cache_pinned=pol.pinned)


def effective_point(point: PointSpec) -> PointSpec:
    """The point as the runtime sees it: FlexGen keeps whole tensors, so its real GPU
    share of the weights replaces the requested percentage."""
    pol = point.policy
    if pol.kind is not PolicyKind.flexgen or pol.weights_gpu_percent in (0.0, 100.0):
        return point
    real = flexgen_gpu_weight_percent(point.model, pol.weights_gpu_percent)
    return point.model_copy(update={"policy": pol.model_copy(update={"weights_gpu_percent": real})})


def build_schedule(point: PointSpec, check_memory: bool = True) -> Schedule:
    """The schedule of one point; raises `MemoryPlanError` if it does not fit."""
    run = effective_point(point)
    return _BlockBuilder(run, scheme_for(run.policy, run), block_options(run)).build(check_memory)


def _ids(*xs: int | None) -> tuple[int, ...]:
    """Sorted, distinct op ids, None dropped."""
    return tuple(sorted({x for x in xs if x is not None}))


def _ids2(a: int | None, b: int | None) -> tuple[int, ...]:
    """`_ids(a, b)`, fast."""
    if a is None:
        return () if b is None else (b,)
    if b is None or a == b:
        return (a,)
    return (a, b) if a < b else (b, a)


class _BlockBuilder:
    """Builds the block schedule as columns.

    What an op is and how big (its payload) depends only on the step, the micro-batch
    and whether the layer is the first or the last, so the builder works it out once per
    (phase, step, micro-batch, layer class) as a *template* of payloads and, per op,
    records only the payload, the item and the dependencies. A first walk over the items
    touches every template in issue order, which gives the memory plan's sizes before a
    single op exists: a point that does not fit is rejected at once.
    """

    def __init__(self, point: PointSpec, scheme: CacheScheme, options: BlockOptions | None = None) -> None:
        self.point = point
        self.m = point.model
        self.pol = point.policy
        self.wl = point.workload
        self.scheme = scheme
        self.opts = options or BlockOptions(cache_pinned=point.policy.pinned)
        self.gbs = point.gpu_batch_size
        self.k = self.pol.num_gpu_batches
        self.L = self.m.layers
        m = self.m
        # model-derived numbers, as plain ints (pydantic properties are slow in a loop)
        self.p = m.dtype_bytes
        self.hidden = m.hidden
        self.kv_hidden = m.kv_hidden
        self.kv_tok = m.kv_bytes_per_token
        self.act_tok = m.act_bytes_per_token
        self.pinned = self.pol.pinned
        self.cpu_attention = self.pol.cpu_attention
        streamed = 1.0 - self.pol.weights_gpu_percent / 100.0
        self.weight_link_bytes = round(m.weight_bytes_per_layer * streamed)
        self.cache_host_fraction = 1.0 - self.pol.cache_gpu_percent / 100.0
        # uniform schemes give every GPU batch the same sizes: one template serves all
        uniform = all(getattr(type(scheme), f) is getattr(CacheScheme, f)
                      for f in ("mb_loads", "mb_recompute", "mb_prefill_stores", "mb_new_token_stores"))
        self.j_key = (lambda j: 0) if uniform else (lambda j: j)
        # payloads, interned, and what the memory plan reads of them
        self.payloads: dict[tuple, int] = {}
        self.payload_stream: list[Stream] = []
        self.largest: dict[OpKind, int] = {}
        self.kinds: set[OpKind] = set()
        self.transient = 0  # the largest a kernel allocates while it runs (see sim/memory.py)
        self._loads_t: dict[tuple, tuple] = {}
        self._compute_t: dict[tuple, tuple] = {}
        self._stores_t: dict[tuple, tuple] = {}
        self._weights_t: int | None = None

    # ---------------------------------------------------------------- payloads
    def _payload(self, kind: OpKind, link_bytes: int = 0, flops: float = 0.0, hbm_bytes: int = 0,
                 host_bytes: int = 0, kernels: int = 0, gpu_bytes: int = 0, workspace_bytes: int = 0,
                 host_alloc_bytes: int = 0, shape: tuple = ()) -> int:
        """The interned payload of one op (see `PAYLOAD_FIELDS`); notes its sizes for the plan.
        Called in issue order the first time each template is needed."""
        pinned = True  # only a copy has a host side
        if kind in LINK_KINDS:
            pinned = self.opts.cache_pinned if kind in CACHE_LINK_KINDS else self.pinned
        stream = KIND_STREAM[kind]
        key = (stream, kind, link_bytes, flops, hbm_bytes, host_bytes, kernels, gpu_bytes, workspace_bytes,
               host_alloc_bytes, pinned, shape)
        idx = self.payloads.get(key)
        if idx is None:
            idx = self.payloads[key] = len(self.payloads)
            self.payload_stream.append(stream)
            self.kinds.add(kind)
        if gpu_bytes > self.largest.get(kind, 0):
            self.largest[kind] = gpu_bytes
        if workspace_bytes > self.transient:
            self.transient = workspace_bytes
        return idx

    def _work_payload(self, kind: OpKind, w: costs.Work, **sizes) -> int:
        return self._payload(kind, flops=w.flops, hbm_bytes=w.hbm_bytes, kernels=w.kernels,
                             workspace_bytes=w.workspace_bytes, **sizes)

    def _tok_shape(self, total: int) -> tuple[tuple[str, int], ...]:
        """Shape of a cache op moving `total` tokens over the GPU batch (batch x tokens = total)."""
        if total % self.gbs == 0:
            return (("batch", self.gbs), ("tokens", total // self.gbs))
        return (("batch", 1), ("tokens", total), ("sequences", self.gbs))

    def _state_bytes(self, kind: OpKind) -> int:
        """Bytes per token per layer of the state a load/store kind moves."""
        if kind in (OpKind.load_kv, OpKind.store_kv):
            return self.kv_tok
        if kind in (OpKind.load_act, OpKind.store_act):
            return self.act_tok
        if kind is OpKind.load_tokens:
            return costs.TOKEN_ID_BYTES
        raise ValueError(kind)

    def _past(self, step: int) -> int:
        """Tokens already in the cache when decode step `step` runs."""
        return self.wl.prompt_len + step - 1

    # --------------------------------------------------------------- templates
    def _weights_template(self) -> int:
        """The payload of one layer's streamed weight load."""
        if self._weights_t is None:
            self._weights_t = self._payload(OpKind.load_weights, link_bytes=self.weight_link_bytes,
                                            gpu_bytes=self.weight_link_bytes,
                                            shape=(("params", self.m.layer_params),))
        return self._weights_t

    def _loads_template(self, t: int, layer: int, j: int) -> tuple:
        """((kind, payload), ...) of the cache loads of item (t, layer, j)."""
        key = (t, self.j_key(j), layer == 0)
        got = self._loads_t.get(key)
        if got is not None:
            return got
        out = []
        if t > 0 and not self.cpu_attention:
            past = self._past(t)
            wanted = dict(self.scheme.mb_loads(past, j, self.gbs))
            if layer == 0:
                wanted = {OpKind.load_tokens: self.gbs * self.scheme.token_id_tokens(past), **wanted}
            for kind, total in wanted.items():
                if total <= 0:
                    continue
                frac = 1.0 if kind is OpKind.load_tokens else self.cache_host_fraction
                nbytes = round(total * self._state_bytes(kind) * frac)
                if nbytes == 0:
                    continue
                out.append((kind, self._payload(kind, link_bytes=nbytes, gpu_bytes=nbytes,
                                                shape=self._tok_shape(total))))
        got = self._loads_t[key] = tuple(out)
        return got

    def _compute_template(self, t: int, layer: int, j: int) -> tuple:
        """The compute ops of item (t, layer, j), and the host bytes they keep.

        GPU attention: ("gpu", recompute kind or None, its payload, attention, ffn, lm_head or None, 0);
        CPU attention: ("cpu", qkv_proj, store_qkv, cpu_attention, load_attn_out, out_proj, ffn,
        lm_head or None, host bytes)."""
        last = layer == self.L - 1
        key = (t, self.j_key(j), last)
        got = self._compute_t.get(key)
        if got is not None:
            return got
        m, gbs, p = self.m, self.gbs, self.p
        if t == 0:
            new, past = self.wl.prompt_len, 0
        else:
            new, past = 1, self._past(t)
        shape = (("batch", gbs), ("new_tokens", new), ("past_tokens", past))
        hidden_bytes = gbs * new * self.act_tok
        if t > 0 and self.cpu_attention:
            qkv_bytes = gbs * (self.hidden + 2 * self.kv_hidden) * p
            qkv = self._work_payload(OpKind.qkv_proj, costs.qkv_proj_work(m, gbs, 1), gpu_bytes=qkv_bytes,
                                     shape=shape)
            host_alloc = gbs * self.kv_tok
            sent = self._payload(OpKind.store_qkv, link_bytes=qkv_bytes, host_alloc_bytes=host_alloc,
                                 shape=shape)
            flops, host_bytes = costs.cpu_attention_work(m, gbs, past + 1)
            cpu = self._payload(OpKind.cpu_attention, flops=flops, host_bytes=host_bytes, shape=shape)
            out_bytes = gbs * self.hidden * p
            back = self._payload(OpKind.load_attn_out, link_bytes=out_bytes, gpu_bytes=out_bytes, shape=shape)
            out = self._work_payload(OpKind.out_proj, costs.out_proj_work(m, gbs, 1), gpu_bytes=out_bytes,
                                     shape=shape)
            head = ("cpu", qkv, sent, cpu, back, out)
        else:
            host_alloc = 0
            rec_kind = rec = None
            plan = self.scheme.mb_recompute(past, j, gbs) if t > 0 else None
            if plan is not None:
                rec_kind, total = plan
                tokens = total // gbs
                if rec_kind is OpKind.recompute_kv:
                    rec = self._work_payload(rec_kind, costs.recompute_kv_work(m, total),
                                             gpu_bytes=total * self.kv_tok, shape=self._tok_shape(total))
                else:  # recompute_layer: re-run this layer for the recomputed prefix
                    work = costs.recompute_layer_work(m, gbs, tokens, last)
                    # what the next op of this prefix reads: the layer's output hidden state for
                    # the next layer's re-run, the rebuilt K,V on the last layer (the executor
                    # writes the hidden state in place, hw/runner.py `_recompute_layer`)
                    out = gbs * tokens * (self.kv_tok if last else self.act_tok)
                    rec = self._work_payload(rec_kind, work, gpu_bytes=out,
                                             shape=(("batch", gbs), ("tokens", tokens), ("last_layer", int(last))))
            # its output slots: the new tokens' K,V, and their input activations where they are
            # stored; the hidden state is updated in place (hw/runner.py `_attention`)
            out_bytes = gbs * new * (self.kv_tok + (self.act_tok if self._stores_act(t, j) else 0))
            work = costs.attention_work(m, gbs, new, past)
            attn = self._work_payload(OpKind.attention, work, gpu_bytes=out_bytes, shape=shape)
            reads_past = plan is not None or self.scheme.mb_loads(past, j, gbs).get(OpKind.load_kv, 0) > 0 \
                if t > 0 else False
            context = attention_context_bytes(self.point, past, reads_past)
            self.transient = max(self.transient, work.workspace_bytes + context)
            head = ("gpu", rec_kind, rec, attn)
        ffn = self._work_payload(OpKind.ffn, costs.ffn_work(m, gbs, new), gpu_bytes=hidden_bytes, shape=shape)
        lm = None
        if last:
            lm = self._work_payload(OpKind.lm_head, costs.lm_head_work(m, gbs), gpu_bytes=gbs * p,
                                    shape=(("batch", gbs),))
        got = self._compute_t[key] = (*head, ffn, lm, host_alloc)
        return got

    def _stores_act(self, t: int, j: int) -> bool:
        """Whether item (t, ., j) stores its new tokens' input activations."""
        if t == 0:
            wanted = self.scheme.mb_prefill_stores(self.wl.prompt_len, j, self.gbs)
        else:
            wanted = self.scheme.mb_new_token_stores(self._past(t), j, self.gbs)
        return wanted.get(OpKind.store_act, 0) > 0

    def _stores_template(self, t: int, j: int) -> tuple | None:
        """(payloads of the stores of item (t, ., j), host bytes they keep); None: no stores
        (CPU attention appends the new K,V itself)."""
        key = (t, self.j_key(j))
        if key in self._stores_t:
            return self._stores_t[key]
        if t > 0 and self.cpu_attention:
            got = None
        else:
            if t == 0:
                wanted = self.scheme.mb_prefill_stores(self.wl.prompt_len, j, self.gbs)
            else:
                wanted = self.scheme.mb_new_token_stores(self._past(t), j, self.gbs)
            out, host = [], 0
            for kind, total in wanted.items():
                nbytes = round(total * self._state_bytes(kind) * self.cache_host_fraction)
                if nbytes == 0:
                    continue
                out.append(self._payload(kind, link_bytes=nbytes, host_alloc_bytes=nbytes,
                                         shape=self._tok_shape(total)))
                host += nbytes
            got = (tuple(out), host)
        self._stores_t[key] = got
        return got

    # ------------------------------------------------------------------ build
    def _items(self) -> list[Item]:
        n, L, k = self.wl.gen_len, self.L, self.k
        return [(t, layer, j) for t in range(n) for layer in range(L) for j in range(k)]

    def _plan_walk(self) -> int:
        """Make every template, in the order `build` first issues an op of each (payloads are
        interned in that order); returns the host bytes the ops keep. Sizes depend only on
        (step, GPU batch, layer class), so this is O(steps x GPU batches), not O(ops).

        Where each template is first used, as (iteration, phase) of `_emit`'s loop: item x's
        cache loads are issued in iteration x - 1 (phase 3; with one layer and one GPU batch a
        decode load waits for the store before it: iteration x, phase 2.5), its stores in
        iteration x + 1 (phase 2), its compute in iteration x (phase 4); weights come first.
        """
        n, L, k = self.wl.gen_len, self.L, self.k
        uniform = self.j_key(1) == 0
        js = range(1) if uniform else range(k)
        mult = k if uniform else 1  # GPU batches sharing a template
        deferred = L * k == 1
        firsts: list[tuple[tuple[float, float], Callable[[], tuple | None]]] = []

        def item(t: int, layer: int, j: int) -> int:
            return (t * L + layer) * k + j

        for t in range(n):
            for j in js:
                for layer in ({0, 1} if L > 1 else {0}):
                    x = item(t, layer, j)
                    pos = (x, 2.5) if deferred and t > 0 else (x - 1, 3)
                    firsts.append((pos, functools.partial(self._loads_template, t, layer, j)))
                for layer in ({0, L - 1} if L > 1 else {0}):
                    firsts.append(((item(t, layer, j), 4), functools.partial(self._compute_template, t, layer, j)))
                firsts.append(((item(t, 0, j) + 1, 2), functools.partial(self._stores_template, t, j)))
        if self.weight_link_bytes:
            self._weights_template()
        host = 0
        for _, make in sorted(firsts, key=lambda f: f[0]):
            make()
        for t in range(n):
            for j in js:
                st = self._stores_template(t, j)
                if st is not None:
                    host += st[1] * L * mult
                first = self._compute_template(t, 0, j)[-1]
                last = self._compute_template(t, L - 1, j)[-1]
                host += (first * (L - 1) + last) * mult if L > 1 else last * mult
        return host

    def build(self, check_memory: bool) -> Schedule:
        n, L, k = self.wl.gen_len, self.L, self.k
        items = self._items()
        meta = ScheduleMeta(
            model=self.m.name, hardware=self.point.hardware.name, policy=self.pol.label,
            layers=L, batch=self.wl.batch, gpu_batch_size=self.gbs, num_gpu_batches=k,
            prompt_len=self.wl.prompt_len, gen_len=n,
        )
        cache_on_host = self._plan_walk()
        plan, gpu_static, host_static = plan_from_sizes(self.point, self.scheme, self.largest, self.transient,
                                                        cache_on_host, self.kinds)
        if check_memory:
            wl = self.wl
            check_plan(plan, f"{self.m.name} on {self.point.hardware.name}, {self.pol.label}, batch {wl.batch} "
                       f"({k}x{self.gbs}), prompt {wl.prompt_len}, gen {wl.gen_len}")
        cols = self._emit(items)
        payloads = [None] * len(self.payloads)
        for key, idx in self.payloads.items():
            payloads[idx] = key
        return Schedule.from_columns(meta, plan, payloads, *cols, gpu_static_bytes=gpu_static,
                                     host_static_bytes=host_static)

    def _emit(self, items: list[Item]):
        """Issue every op in FlexGen's program order (see the module docstring); returns the
        columns (payload, layer, step, micro-batch, deps, after).

        One loop, inlined, with op ids counted rather than looked up: this is the hot path
        of a sweep. Per op it appends a code (payload x items + item), the deps and the
        `after` list."""
        L, k = self.L, self.k
        n_items = len(items)
        n_layers = self.wl.gen_len * L
        per_step = L * k
        barrier_on = self.opts.step_barrier
        N = n_items
        # templates of every item, payloads pre-multiplied into codes (payload * N + item)
        loads_t, compute_t, stores_t = self._loads_template, self._compute_template, self._stores_template

        def coded_loads(tpl):
            """(codes, is-token-ids flags, offsets of the load_kv / load_act / load_tokens op or None)."""
            kinds = [kind for kind, _ in tpl]

            def off(kind):
                return kinds.index(kind) if kind in kinds else None

            return (tuple(pay * N for _, pay in tpl), tuple(kind is OpKind.load_tokens for kind in kinds),
                    off(OpKind.load_kv), off(OpKind.load_act), off(OpKind.load_tokens))

        def coded_compute(tpl):
            if tpl[0] == "cpu":
                return ("cpu", *(x * N for x in tpl[1:6]), tpl[6] * N, None if tpl[7] is None else tpl[7] * N)
            _, rec_kind, rec, attn, ffn, lm, _host = tpl
            return ("gpu", rec_kind, None if rec is None else rec * N, attn * N, ffn * N,
                    None if lm is None else lm * N)

        def coded_stores(tpl):
            return None if tpl is None else tuple(p * N for p in tpl[0])

        # per item, built a step at a time: a template serves a whole layer class
        LT: list = []
        CT: list = []
        ST: list = []
        for t in range(self.wl.gen_len):
            first = [coded_loads(loads_t(t, 0, j)) for j in range(k)]
            rest = [coded_loads(loads_t(t, 1, j)) for j in range(k)] if L > 1 else []
            LT += first + rest * (L - 1)
            mid = [coded_compute(compute_t(t, 0, j)) for j in range(k)] if L > 1 else []
            CT += mid * (L - 1) + [coded_compute(compute_t(t, L - 1, j)) for j in range(k)]
            ST += [coded_stores(stores_t(t, j)) for j in range(k)] * L
        weights_code = self._weights_template() * N if self.weight_link_bytes else None
        rebuild_after_kv = self.opts.rebuild_after_kv

        PC: list[int] = []  # payload * N + item, per op
        DEPS: list[tuple[int, ...]] = []
        AFTER: list[tuple[int, ...]] = []
        pc_app, d_app, a_app = PC.append, DEPS.append, AFTER.append
        nid = 0  # the next op id
        barrier: tuple[int, ...] = ()
        bset: set[int] = set()

        # producers, by item or by layer index (t * L + layer)
        weights: list[int | None] = [None] * n_layers
        attention: list[int] = [0] * n_items
        tail: list[int] = [0] * n_items  # the ffn, or the LM head on the last layer
        ffn_of: list[int] = [0] * n_items
        lm_of: list[int | None] = [None] * n_items
        rec_of: list[int | None] = [None] * n_items
        stores: list[tuple[int, ...] | None] = [None] * n_items
        loads_first: list[int] = [0] * n_items  # id of each item's first cache load
        pending: dict[int, int] = {}
        recompute_kv = OpKind.recompute_kv

        def weight_load(idx: int, nid: int) -> int:
            # double buffer: overwrite the buffer of the layer two back once it is done
            after = tuple(tail[(idx - 2) * k:(idx - 1) * k]) if idx >= 2 else ()
            if barrier:
                after = tuple(sorted(bset.union(after)))
            pc_app(weights_code + idx * k)
            d_app(())
            a_app(after)
            weights[idx] = nid
            return nid + 1

        def emit_loads(i: int, nid: int) -> int:
            codes, tok, *_ = LT[i]
            if not codes:
                return nid
            loads_first[i] = nid
            after = (attention[i - 2],) if i >= 2 else ()
            if barrier:
                after = tuple(sorted(bset.union(after)))
            written = stores[i - per_step]  # the previous step's store of this (layer, micro-batch)
            for code, is_tok in zip(codes, tok, strict=True):
                pc_app(code + i)
                d_app(() if is_tok else written)
                a_app(after)
                nid += 1
            return nid

        if weights_code is not None:
            nid = weight_load(0, nid)
        nid = emit_loads(0, nid)
        since = 0
        pstream = self.payload_stream

        def synced(since: int, nid: int, barrier: tuple[int, ...]) -> tuple[int, ...]:
            """FlexGen's sync(): what the next op waits for, the last op of each stream issued
            since `since` (streams run in order); unchanged if nothing was issued."""
            last: dict[Stream, int] = {}
            for op in range(since, nid):
                last[pstream[PC[op] // N]] = op
            return tuple(sorted(last.values())) if last else barrier

        for i in range(n_items):
            t, layer, j = items[i]
            if barrier_on:  # FlexGen: sync() ends every (layer, GPU batch) step
                barrier = synced(since, nid, barrier)
                bset = set(barrier)
                since = nid
            plain = barrier
            li = t * L + layer
            if j == 0 and li + 1 < n_layers and weights_code is not None:
                nid = weight_load(li + 1, nid)
            # store(i - 1): one behind (issue order across streams does not change any stream's queue)
            if i >= 1:
                st = ST[i - 1]
                if st is not None:
                    deps = (attention[i - 1],)
                    first = nid
                    for code in st:
                        pc_app(code + i - 1)
                        d_app(deps)
                        a_app(plain)
                        nid += 1
                    stores[i - 1] = tuple(range(first, nid))
                if pending and i - 1 in pending:
                    nid = emit_loads(pending.pop(i - 1), nid)
            # load(i + 1): one ahead
            if i + 1 < n_items:
                if items[i + 1][0] == 0 or stores[i + 1 - per_step] is not None:
                    codes, tok, *_ = LT[i + 1]
                    if codes:  # emit_loads(i + 1), inlined
                        loads_first[i + 1] = nid
                        after = (attention[i - 1],) if i >= 1 else ()
                        if barrier:
                            after = tuple(sorted(bset.union(after)))
                        written = stores[i + 1 - per_step]
                        for code, is_tok in zip(codes, tok, strict=True):
                            pc_app(code + i + 1)
                            d_app(() if is_tok else written)
                            a_app(after)
                            nid += 1
                else:
                    pending[i + 1 - per_step] = i + 1
            # compute(i)
            tpl = CT[i]
            w = weights[li]
            hidden_in = (ffn_of[i - k] if layer > 0 else lm_of[i - k]) if i >= k else None
            drained = stores[i - 2] if i >= 2 else ()
            if barrier:
                drained = tuple(sorted(bset.union(drained)))
            if tpl[0] == "cpu":
                _, qkv_c, sent_c, cpu_c, back_c, out_c, ffn_c, lm_c = tpl
                qkv = nid
                sent, cpu, back, attn = qkv + 1, qkv + 2, qkv + 3, qkv + 4
                PC.extend((qkv_c + i, sent_c + i, cpu_c + i, back_c + i, out_c + i))
                DEPS.extend((_ids2(w, hidden_in), (qkv,), (sent,), (cpu,), _ids2(w, back)))
                AFTER.extend((drained, plain, plain, plain, plain))
                stores[i] = (sent,)
                nid += 5
            else:
                _, rec_kind, rec_c, attn_c, ffn_c, lm_c = tpl
                _, _, kv_off, act_off, tok_off = LT[i]
                base = loads_first[i]
                rec = None
                if rec_c is not None:
                    if rec_kind is recompute_kv:
                        deps = _ids2(w, None if act_off is None else base + act_off)
                        if rebuild_after_kv and kv_off is not None:  # KVPR: see BlockOptions
                            deps = _ids(*deps, base + kv_off)
                    else:  # recompute_layer: re-run this layer for the recomputed prefix
                        deps = _ids2(w, rec_of[i - k] if layer else (None if tok_off is None else base + tok_off))
                        rec_of[i] = nid
                    rec = nid
                    pc_app(rec_c + i)
                    d_app(deps)
                    a_app(plain)
                    nid += 1
                attn = nid
                pc_app(attn_c + i)
                d_app(_ids(w, hidden_in, rec, None if kv_off is None else base + kv_off))
                a_app(drained)
                nid += 1
            attention[i] = attn
            ffn_of[i] = nid
            pc_app(ffn_c + i)
            d_app((attn,) if w is None else (w, attn))  # the weights arrived before attention was issued
            a_app(plain)
            nid += 1
            if lm_c is not None:
                lm_of[i] = tail[i] = nid
                pc_app(lm_c + i)
                d_app((nid - 1,))
                a_app(plain)
                nid += 1
            else:
                tail[i] = nid - 1
        # store(n_items - 1), after the sync that ends the last step
        if barrier_on:
            barrier = synced(since, nid, barrier)
        st = ST[n_items - 1]
        if st is not None:
            deps = (attention[n_items - 1],)
            for code in st:
                pc_app(code + n_items - 1)
                d_app(deps)
                a_app(barrier)
        assert not pending, "a cache load was never issued"

        pc = np.asarray(PC, dtype=np.int64)
        payload, it = np.divmod(pc, N)
        return payload.tolist(), (it // k) % L, it // per_step, it % k, DEPS, AFTER
