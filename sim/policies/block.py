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
from ..schedule import KIND_STREAM, LINK_KINDS, MemoryPlan, OpKind, Schedule, ScheduleMeta, Stream
from ..specs import PointSpec, PolicyKind
from .placement import flexgen_gpu_weight_percent
from .registry import scheme_for
from .schemes import CacheScheme

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


def build_schedule(point: PointSpec, check_memory: bool = True, compiled: bool | None = None) -> Schedule:
    """The schedule of one point; raises `MemoryPlanError` if it does not fit.
    compiled=False emits the ops with the plain-Python form of the kernel, True with the
    compiled one, None as `sim.compiled.Kernel.auto` decides (same ops either way)."""
    run = effective_point(point)
    return _BlockBuilder(run, scheme_for(run.policy, run), block_options(run)).build(check_memory, compiled)


def known_plan(point: PointSpec):
    """The part of the memory plan known before any template is made (resident weights,
    weight slots, the cache kept on the GPU, hidden states, new-K,V slots, token ids). Every
    plan item only grows as the templates fill in the sizes, so it never exceeds the plan
    `build_schedule` makes."""
    run = effective_point(point)
    scheme = scheme_for(run.policy, run)
    streamed = _BlockBuilder(run, scheme, block_options(run)).weight_link_bytes
    largest = {OpKind.load_weights: streamed} if streamed else {}
    return plan_from_sizes(run, scheme, largest, 0, 0, ())[0]


def surely_does_not_fit(point: PointSpec) -> bool:
    """True when `known_plan` already exceeds a memory, so `build_schedule` would raise
    `MemoryPlanError`; a search uses it to skip such a candidate without walking its steps
    (False says nothing)."""
    return not known_plan(point).fits


def payload_counts(point: PointSpec, check_memory: bool = True) -> tuple[list[tuple], np.ndarray]:
    """(payloads, how many ops of each) of `point`'s schedule, with no op emitted: what a
    cost model whose durations depend on payloads only needs to price every stream's busy
    time (a lower bound on the makespan). Raises `MemoryPlanError` as `build_schedule` does."""
    run = effective_point(point)
    builder = _BlockBuilder(run, scheme_for(run.policy, run), block_options(run))
    builder.plan(check_memory)
    counts = builder.payload_counts()
    return builder.payload_list(), counts


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
        self._tables_cache: dict | None = None
        self.cache_item_bytes = 0  # the most K,V + activation bytes one item loads (see sim/memory.py)

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
        item_bytes = 0
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
                if kind is not OpKind.load_tokens:
                    item_bytes += nbytes
        self.cache_item_bytes = max(self.cache_item_bytes, item_bytes)
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
            cpu_shape = shape + (("heads", m.heads), ("kv_heads", m.kv_heads), ("head_dim", m.head_dim))
            cpu = self._payload(OpKind.cpu_attention, flops=flops, host_bytes=host_bytes, shape=cpu_shape)
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

    def plan(self, check_memory: bool) -> tuple[MemoryPlan, int, int]:
        """Walk the templates and make the memory plan, (plan, GPU static bytes, host static
        bytes); check_memory=True raises `MemoryPlanError` where it does not fit."""
        cache_on_host = self._plan_walk()
        got = plan_from_sizes(self.point, self.scheme, self.largest, self.transient, cache_on_host, self.kinds,
                              cache_item_bytes=self.cache_item_bytes)
        if check_memory:
            wl = self.wl
            check_plan(got[0], f"{self.m.name} on {self.point.hardware.name}, {self.pol.label}, batch {wl.batch} "
                       f"({self.k}x{self.gbs}), prompt {wl.prompt_len}, gen {wl.gen_len}")
        return got

    def payload_list(self) -> list[tuple]:
        """The interned payloads, by index (`schedule.PAYLOAD_FIELDS` order): a payload's index is
        its insertion order in `self.payloads`."""
        return list(self.payloads)

    def build(self, check_memory: bool, compiled: bool | None = None) -> Schedule:
        n, L, k = self.wl.gen_len, self.L, self.k
        meta = ScheduleMeta(
            model=self.m.name, hardware=self.point.hardware.name, policy=self.pol.label,
            layers=L, batch=self.wl.batch, gpu_batch_size=self.gbs, num_gpu_batches=k,
            prompt_len=self.wl.prompt_len, gen_len=n,
        )
        plan, gpu_static, host_static = self.plan(check_memory)
        cols = self._emit(compiled)
        return Schedule.from_arrays(meta, plan, self.payload_list(), *cols, gpu_static_bytes=gpu_static,
                                    host_static_bytes=host_static)

    def _emit(self, compiled: bool | None = None):
        """Issue every op in FlexGen's program order (see the module docstring); returns the
        arrays (payload, layer, step, micro-batch, deps CSR, after CSR).

        The templates become integer tables (`_tables`); the compiled kernel
        `block_emit.emit_block` walks the items and writes the ops."""
        from .block_emit import emit_block

        tb = self._tables()
        n_ops = tb["n_ops"]
        cols = emit_block.pick(compiled, n_ops)(
            self.wl.gen_len, self.L, self.k, self.opts.step_barrier, self.opts.rebuild_after_kv, tb["weights"],
            tb["lt_of"], tb["lt_ptr"], tb["lt_pay"], tb["lt_tok"], tb["lt_off"], tb["ct_of"], tb["ct"],
            tb["st_of"], tb["st_has"], tb["st_ptr"], tb["st_pay"], tb["pay_stream"], len(Stream), n_ops)
        assert len(cols[0]) == n_ops, (len(cols[0]), n_ops)
        return cols

    def payload_counts(self) -> np.ndarray:
        """How many ops of each payload the schedule holds, from the template tables alone
        (no op emitted): equal to `np.bincount(schedule.payload_index)` (tested)."""
        from .block_emit import CT_LM, CT_REC

        tb = self._tables()
        L = self.L
        counts = np.zeros(len(self.payloads), dtype=np.int64)
        if tb["weights"] >= 0:
            counts[tb["weights"]] += self.wl.gen_len * L

        def add_csr(uses: np.ndarray, ptr: np.ndarray, pay: np.ndarray) -> None:
            owner = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))  # the template of each entry
            np.add.at(counts, pay, uses[owner])

        n_lt, n_ct, n_st = len(tb["lt_ptr"]) - 1, len(tb["ct"]), len(tb["st_ptr"]) - 1
        # loads and compute: class 0 serves layer 0 (loads) or every layer but the last (compute)
        first, rest = (1, L - 1) if L > 1 else (1, 0)
        lt_uses = np.bincount(tb["lt_of"][:, 0].ravel(), minlength=n_lt) * first
        lt_uses += np.bincount(tb["lt_of"][:, 1].ravel(), minlength=n_lt) * rest
        add_csr(lt_uses, tb["lt_ptr"], tb["lt_pay"])
        st_uses = np.bincount(tb["st_of"].ravel(), minlength=n_st) * L * tb["st_has"]
        add_csr(st_uses, tb["st_ptr"], tb["st_pay"])
        ct_uses = np.bincount(tb["ct_of"][:, 0].ravel(), minlength=n_ct) * (L - 1)
        ct_uses += np.bincount(tb["ct_of"][:, 1].ravel(), minlength=n_ct)
        pays = tb["ct"][:, CT_REC:CT_LM + 1]  # every payload column; -1 where a template has none
        used = pays >= 0
        np.add.at(counts, pays[used], np.broadcast_to(ct_uses[:, None], pays.shape)[used])
        return counts

    def _tables(self) -> dict:
        """The templates as integer tables (block_emit's layout: a template id per step,
        layer class and GPU batch, since a template serves a whole layer class), and the
        schedule's op count; made once."""
        if self._tables_cache is not None:
            return self._tables_cache
        from .block_emit import CT_WIDTH, REC_KV, REC_LAYER, REC_NONE

        L, k, n_steps = self.L, self.k, self.wl.gen_len
        loads_t, compute_t, stores_t = self._loads_template, self._compute_template, self._stores_template
        lt_ids: dict[tuple, int] = {}
        ct_ids: dict[tuple, int] = {}
        st_ids: dict[tuple | None, int] = {}

        def lid(tpl):
            return lt_ids.setdefault(tpl, len(lt_ids))

        def cid(tpl):
            return ct_ids.setdefault(tpl, len(ct_ids))

        def sid(tpl):
            return st_ids.setdefault(tpl, len(st_ids))

        # template ids by (step, layer class, GPU batch); see block_emit. A uniform scheme
        # gives every GPU batch the template of GPU batch 0.
        js = range(1) if self.j_key(1) == 0 else range(k)
        LT = [[[lid(loads_t(t, c, j)) for j in js] for c in (0, min(1, L - 1))] for t in range(n_steps)]
        CT = [[[cid(compute_t(t, c, j)) for j in js] for c in (0, L - 1)] for t in range(n_steps)]
        ST = [[sid(stores_t(t, j)) for j in js] for t in range(n_steps)]

        # loads: CSR of (payload, is token ids) per template; offsets of load_kv, load_act, load_tokens
        lt_ptr, lt_pay, lt_tok, lt_off = [0], [], [], []
        for tpl in lt_ids:
            kinds = [kind for kind, _ in tpl]
            lt_pay += [pay for _, pay in tpl]
            lt_tok += [kind is OpKind.load_tokens for kind in kinds]
            lt_ptr.append(len(lt_pay))
            lt_off.append([kinds.index(kd) if kd in kinds else -1
                           for kd in (OpKind.load_kv, OpKind.load_act, OpKind.load_tokens)])
        # compute: one row per template
        ct = np.full((len(ct_ids), CT_WIDTH), -1, dtype=np.int64)
        for row, tpl in zip(ct, ct_ids, strict=True):
            if tpl[0] == "cpu":  # ("cpu", qkv, sent, cpu, back, out, ffn, lm, host)
                row[:2] = (1, REC_NONE)
                row[4:9] = tpl[1:6]
                ffn, lm = tpl[6], tpl[7]
            else:  # ("gpu", rec kind, rec, attn, ffn, lm, host)
                _, rec_kind, rec, attn, ffn, lm, _host = tpl
                row[0] = 0
                row[1] = REC_NONE if rec_kind is None else REC_KV if rec_kind is OpKind.recompute_kv else REC_LAYER
                row[2] = -1 if rec is None else rec
                row[3] = attn
            row[9] = ffn
            row[10] = -1 if lm is None else lm
        # stores: CSR per template; None: no store step
        st_ptr, st_pay, st_has = [0], [], []
        for tpl in st_ids:
            st_has.append(tpl is not None)
            st_pay += [] if tpl is None else list(tpl[0])
            st_ptr.append(len(st_pay))
        weights = self._weights_template() if self.weight_link_bytes else -1

        def arr(xs, dtype=np.int64):
            return np.asarray(xs, dtype=dtype).reshape(-1) if len(xs) else np.zeros(0, dtype=dtype)

        lt_of, ct_of, st_of = (np.ascontiguousarray(np.broadcast_to(np.asarray(x, dtype=np.int64),
                                                                    (n_steps, *np.shape(x)[1:-1], k)))
                               for x in (LT, CT, ST))
        # ops: every layer's weights, and each item's loads, compute and stores
        lt_len = np.diff(arr(lt_ptr))[lt_of]
        st_len = (np.diff(arr(st_ptr)) * arr(st_has))[st_of]
        ct_len = (np.where(ct[:, 0] == 1, 6, 2 + (ct[:, 2] >= 0)) + (ct[:, 10] >= 0))[ct_of]
        n_ops = int(n_steps * L * (weights >= 0) + (lt_len[:, 0].sum() + lt_len[:, 1].sum() * (L - 1)
                    if L > 1 else lt_len[:, 0].sum()) + st_len.sum() * L
                    + (ct_len[:, 0].sum() * (L - 1) + ct_len[:, 1].sum() if L > 1 else ct_len[:, 1].sum()))
        stream_code = {s: c for c, s in enumerate(Stream)}
        self._tables_cache = {
            "n_ops": n_ops, "weights": weights, "lt_of": lt_of, "lt_ptr": arr(lt_ptr), "lt_pay": arr(lt_pay),
            "lt_tok": arr(lt_tok, np.bool_), "lt_off": arr(lt_off).reshape(-1, 3), "ct_of": ct_of, "ct": ct,
            "st_of": st_of, "st_has": arr(st_has, np.bool_), "st_ptr": arr(st_ptr), "st_pay": arr(st_pay),
            "pay_stream": arr([stream_code[s] for s in self.payload_stream]),
        }
        return self._tables_cache
