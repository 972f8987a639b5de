"""What one op does, by kind: real tensor math and real copies on the run's buffers.

The mapping from op kinds to work (the simplest faithful one):

- `load_weights`: copy the op's part of layer `l`'s streamed weights host -> weight
  slot (the whole streamed layer, or KVPR's early part: the attention norm and the
  K,V rows of `W_QKV`, `b_QKV`; then the rest), exactly the op's `link_bytes`;
- `load_kv` / `load_act` / `load_tokens`: copy the op's host entries -> load slot
  (token-major: one copy; packed (HybridServe): one copy per sequence);
- `attention`: (layer 0 of the prefill: embed the prompt first) LN, Q,K,V of the
  new tokens, attention over [rebuilt K,V; loaded K,V; new K,V] (packed loads are
  scattered to their (position, sequence) in a context buffer first), output
  projection, residual; keeps the new tokens' K,V (and input activations) in an
  output slot for the stores;
- `recompute_kv`: K,V = LN(x).[W_K W_V] (+ rotary) of the loaded activations;
- `recompute_layer`: the whole layer over the recomputed prefix (layer 0 embeds
  the loaded token ids); its last layer only rebuilds K,V;
- `ffn`: residual FFN; `lm_head`: final norm, LM head, greedy argmax, the token id
  copied to the host token list and embedded as the next step's input;
- `store_kv` / `store_act`: copy rows of the attention output slot -> host entries;
- FlexGen's CPU attention: `qkv_proj` (GPU), `store_qkv` (Q,K,V -> host),
  `cpu_attention` (host: append K,V to the cache, attend in fp32),
  `load_attn_out` (result -> GPU), `out_proj` (GPU, residual).

Copies are `non_blocking`; on the CPU backend they are plain memory copies.
"""

from __future__ import annotations

import torch

from ..sim.schedule import Op, OpKind
from ..sim.specs import PointSpec
from .buffers import DeviceBuffers, HostBuffers
from .kernels import HeadKernels, LayerKernels
from .plan import ExecPlan

LOAD_KINDS = (OpKind.load_kv, OpKind.load_act, OpKind.load_tokens)
RECOMPUTE_KINDS = (OpKind.recompute_kv, OpKind.recompute_layer)


class OpRunner:
    def __init__(self, point: PointSpec, plan: ExecPlan, host: HostBuffers, dev: DeviceBuffers,
                 fused_qkv: bool = True, capture: dict[int, torch.Tensor] | None = None,
                 copied: dict[int, int] | None = None) -> None:
        self.point, self.plan, self.host, self.dev = point, plan, host, dev
        #: bytes each link op really copied (for tests; None: not counted)
        self.copied = copied
        self.ops = plan.schedule.ops
        self.layers = point.model.layers
        self.kern = LayerKernels(point.model, dev.rotary, fused_qkv)
        self.cpu_kern = LayerKernels(point.model, None, fused_qkv)
        self.head = HeadKernels(point.model)
        self.capture = capture
        self.keeps_x = {(op.step, op.layer, op.micro_batch) for op in self.ops if op.kind is OpKind.store_act}
        self._dispatch = {
            OpKind.load_weights: self._load_weights,
            OpKind.load_kv: self._load_cache, OpKind.load_act: self._load_cache,
            OpKind.load_tokens: self._load_tokens,
            OpKind.load_attn_out: self._load_attn_out,
            OpKind.store_kv: self._store_cache, OpKind.store_act: self._store_cache,
            OpKind.store_qkv: self._store_qkv,
            OpKind.attention: self._attention,
            OpKind.qkv_proj: self._qkv_proj,
            OpKind.out_proj: self._out_proj,
            OpKind.ffn: self._ffn,
            OpKind.recompute_kv: self._recompute_kv,
            OpKind.recompute_layer: self._recompute_layer,
            OpKind.lm_head: self._lm_head,
            OpKind.cpu_attention: self._cpu_attention,
        }

    def run(self, op: Op) -> None:
        self._dispatch[op.kind](op)

    # ---------------------------------------------------------------- helpers
    def _slot(self, op: Op) -> int:
        return self.plan.item(op) % 2

    def _weights(self, op: Op) -> dict[str, torch.Tensor]:
        return self.dev.layer_weights(op.layer, (op.step * self.layers + op.layer) % 2)

    def _dep(self, op: Op, kind: OpKind) -> Op | None:
        return next((self.ops[d] for d in op.deps if self.ops[d].kind is kind), None)

    def _rows(self, op: Op) -> tuple[int, int]:
        s = op.shape_dict
        return s["new_tokens"], s["past_tokens"]

    def _embed(self, ids: torch.Tensor, first_position: int) -> torch.Tensor:
        d = self.dev
        return self.head.embed(ids, d.embed, d.positions, slice(first_position, first_position + ids.shape[0]))

    def _keep(self, op: Op, rebuilt: torch.Tensor) -> None:
        if self.capture is not None:
            self.capture[op.id] = rebuilt.detach().to("cpu", copy=True)

    # ------------------------------------------------------------------ copies
    def _load_weights(self, op: Op) -> None:
        slot = self.dev.weight_slots[(op.step * self.layers + op.layer) % 2]
        host = self.host.weights[op.layer]
        for a, b in self.plan.weights.copies[op.id]:
            slot[a:b].copy_(host[a:b], non_blocking=True)
            self._moved(op, host[a:b])

    def _moved(self, op: Op, t: torch.Tensor) -> None:
        if self.copied is not None:
            self.copied[op.id] = self.copied.get(op.id, 0) + t.numel() * t.element_size()

    def _load_cache(self, op: Op) -> None:
        acc = self.plan.access[op.id]
        host = self.host.cache[(acc.layer, acc.micro_batch, acc.cls)]
        gbs = self.plan.gbs
        dst = self.dev.cache_rows(op.kind, self._slot(op), acc.rows(gbs))
        if acc.packed:
            for sg in acc.segments:
                src = host[sg.seq, sg.start:sg.stop]
                dst[sg.row:sg.row + sg.n].copy_(src, non_blocking=True)
                self._moved(op, src)
        else:
            view = dst.view(len(acc.positions), gbs, -1)
            for sg in acc.segments:
                src = host[sg.start:sg.stop]
                view[sg.row:sg.row + sg.n].copy_(src, non_blocking=True)
                self._moved(op, src)

    def _loaded(self, op: Op) -> torch.Tensor:
        """A load's rows in its slot: token-major `[tokens, gbs, w]`, packed `[rows, 1, w]`."""
        acc = self.plan.access[op.id]
        rows = self.dev.cache_rows(op.kind, self._slot(op), acc.rows(self.plan.gbs))
        return rows[:, None] if acc.packed else rows.view(len(acc.positions), self.plan.gbs, -1)

    def _load_tokens(self, op: Op) -> None:
        r = self.plan.ranges[op.id]
        src = self.host.tokens[op.micro_batch][r.start:r.stop]
        self.dev.loads[OpKind.load_tokens][self._slot(op)][:r.tokens].copy_(src, non_blocking=True)
        self._moved(op, src)

    def _store_cache(self, op: Op) -> None:
        acc = self.plan.access[op.id]
        host = self.host.cache[(acc.layer, acc.micro_batch, acc.cls)]
        out = (self.dev.new_kv if op.kind is OpKind.store_kv else self.dev.new_x)[self._slot(op)]
        for sg in acc.segments:
            if acc.packed:
                src, dst = out[sg.row:sg.row + sg.n, sg.seq], host[sg.seq, sg.start:sg.stop]
            else:
                src, dst = out[sg.row:sg.row + sg.n], host[sg.start:sg.stop]
            dst.copy_(src, non_blocking=True)
            self._moved(op, src)

    def _store_qkv(self, op: Op) -> None:
        slot = self._slot(op)
        self.host.qkv[slot].copy_(self.dev.qkv[slot], non_blocking=True)
        self._moved(op, self.dev.qkv[slot])

    def _load_attn_out(self, op: Op) -> None:
        slot = self._slot(op)
        self.dev.attn_in[slot].copy_(self.host.attn_out[slot], non_blocking=True)
        self._moved(op, self.host.attn_out[slot])

    # ----------------------------------------------------------------- compute
    def _attention(self, op: Op) -> None:
        new, past = self._rows(op)
        w, slot, hidden = self._weights(op), self._slot(op), self.dev.hidden[op.micro_batch]
        if op.layer == 0 and op.step == 0:
            hidden[:new].copy_(self._embed(self.dev.prompt_ids[op.micro_batch], 0))
        x = hidden[:new]
        q, kv = self.kern.qkv(x, w, slice(past, past + new))
        self.dev.new_kv[slot][:new].copy_(kv)
        if (op.step, op.layer, op.micro_batch) in self.keeps_x:
            self.dev.new_x[slot][:new].copy_(x)
        if self.plan.packed and op.step > 0:
            context = self._packed_context(op, kv, past)
        else:
            parts = []
            for kind in RECOMPUTE_KINDS:
                rec = self._dep(op, kind)
                if rec is not None:
                    parts.append(self._rebuilt(rec))
            loaded = self._dep(op, OpKind.load_kv)
            if loaded is not None:
                parts.append(self._loaded(loaded))
            context = torch.cat((*parts, kv)) if parts else kv
        hidden[:new].copy_(x + self.kern.out_proj(self.kern.attend(q, context), w))

    def _packed_context(self, op: Op, kv: torch.Tensor, past: int) -> torch.Tensor:
        """[past + 1, gbs, 2hk]: every packed row (rebuilt or loaded) at its (position, sequence),
        in a context allocated for this attention, as the unpacked path's `torch.cat` is (every
        (position, sequence) below `past` is either rebuilt or loaded, so every row is written)."""
        ctx = torch.empty((past + 1, self.plan.gbs, kv.shape[-1]), dtype=kv.dtype, device=kv.device)
        flat = ctx.view(-1, ctx.shape[-1])
        rec = self._dep(op, OpKind.recompute_kv)
        if rec is not None:
            load = self._dep(rec, OpKind.load_act)
            flat.index_copy_(0, self.dev.scatter[load.id], self._rebuilt(rec)[:, 0])
        loaded = self._dep(op, OpKind.load_kv)
        if loaded is not None:
            flat.index_copy_(0, self.dev.scatter[loaded.id], self._loaded(loaded)[:, 0])
        ctx[past:].copy_(kv)
        return ctx

    def _rebuilt(self, rec: Op) -> torch.Tensor:
        """A recompute's output rows, shaped like the load it rebuilt."""
        if rec.kind is OpKind.recompute_layer:
            return self.dev.rebuilt_kv[:rec.shape_dict["tokens"] * self.plan.gbs].view(
                rec.shape_dict["tokens"], self.plan.gbs, -1)
        load = self._dep(rec, OpKind.load_act)
        acc = self.plan.access[load.id]
        rows = self.dev.rebuilt_kv[:acc.rows(self.plan.gbs)]
        return rows[:, None] if acc.packed else rows.view(len(acc.positions), self.plan.gbs, -1)

    def _ffn(self, op: Op) -> None:
        new, _ = self._rows(op)
        x = self.dev.hidden[op.micro_batch][:new]
        x.copy_(self.kern.ffn(x, self._weights(op)))

    def _recompute_kv(self, op: Op) -> None:
        load = self._dep(op, OpKind.load_act)
        x = self._loaded(load)
        positions = self.dev.rope_positions.get(load.id)
        out = self._rebuilt(op)
        out.copy_(self.kern.kv_proj(x, self._weights(op), positions))
        self._keep(op, out)

    def _recompute_layer(self, op: Op) -> None:
        s = op.shape_dict
        tokens, last = s["tokens"], bool(s["last_layer"])
        w, prefix = self._weights(op), self.dev.prefix_hidden[op.micro_batch][:tokens]
        if op.layer == 0:
            ids = self.dev.loads[OpKind.load_tokens][self._slot(op)][:tokens]
            x = self._embed(ids, 0)
        else:
            x = prefix
        out = self._rebuilt(op)
        if last:
            out.copy_(self.kern.kv_proj(x, w, slice(0, tokens)))
        else:
            y, kv = self.kern.forward(x, w, None, slice(0, tokens))
            out.copy_(kv)
            prefix.copy_(y)
        self._keep(op, out)

    def _lm_head(self, op: Op) -> None:
        step, j = op.step, op.micro_batch
        prompt = self.point.workload.prompt_len
        hidden = self.dev.hidden[j]
        last_row = prompt - 1 if step == 0 else 0
        token = self.head.greedy(hidden[last_row], self.dev.final_norm, self.dev.lm_head, self.kern)
        position = prompt + step
        self.host.tokens[j][position].copy_(token.to(torch.int32), non_blocking=True)
        if position < self.point.model.max_positions:
            hidden[:1].copy_(self._embed(token[None], position))

    def _qkv_proj(self, op: Op) -> None:
        _, past = self._rows(op)
        x = self.dev.hidden[op.micro_batch][:1]
        q, kv = self.kern.qkv(x, self._weights(op), slice(past, past + 1))
        self.dev.qkv[self._slot(op)].copy_(torch.cat((q, kv), dim=-1)[0])

    def _cpu_attention(self, op: Op) -> None:
        h = self.point.model.hidden
        slot, r = self._slot(op), self.plan.ranges[op.id]
        qkv = self.host.qkv[slot]
        cache = self.host.cache[(r.layer, r.micro_batch, "kv")]
        cache[r.stop - 1].copy_(qkv[:, h:])
        out = self.cpu_kern.attend(qkv[None, :, :h].float(), cache[:r.stop].float())
        self.host.attn_out[slot].copy_(out[0])

    def _out_proj(self, op: Op) -> None:
        x = self.dev.hidden[op.micro_batch][:1]
        attn = self.dev.attn_in[self._slot(op)][None]
        x.copy_(x + self.kern.out_proj(attn, self._weights(op)))
