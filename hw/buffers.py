"""Host buffers (pinned or pageable) and device double buffers for one schedule.

Host (`HostBuffers`): each layer's streamed weights (compact: the elements
`plan.weights` streams, in flat order), the cache lists of `plan` (token-major
`kv` `[entries, gbs, 2*kv_hidden]`, `act` `[entries, gbs, hidden]` per layer and
micro-batch; sequence-major `[gbs, entries, width]` for HybridServe), token ids
`[positions, gbs]` per micro-batch, and FlexGen's CPU-attention exchange buffers.
Each group is pinned (page-locked) or pageable as the `pinned` flag of the ops
that move it says (FlexGen moves its K,V from pageable memory while its weights
are pinned), and only where CUDA is present: `pinned` records each group.

Device (`DeviceBuffers`): two weight slots (layer `i` of the step-major layer
sequence uses slot `i % 2`), two slots per load kind (rows `[.., width]`: a
token-major load fills `tokens x gbs` rows, a packed one its rows one sequence
after another) and for each attention's new K,V / input activations (item `i`
uses slot `i % 2`: the schedule's `after` edges free them), one hidden state per
micro-batch, and the resident part of every layer's weights, embeddings and LM
head (a tied head is the embedding itself). `sim/memory.py` plans exactly these
buffers (`tests/test_memory_plan.py` compares them). On the CPU backend
"device" is ordinary memory and every copy is a real memory copy.

A parameter split between the resident part and a slot is joined by one device
copy when a kernel needs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..sim.schedule import OpKind, Schedule
from ..sim.specs import PointSpec
from .kernels import Rotary
from .plan import ExecPlan
from .weights import TORCH_DTYPES, ModelWeights

#: host buffer group -> op kinds that move it over the link
HOST_GROUPS = {
    "weights": (OpKind.load_weights,),
    "kv": (OpKind.load_kv, OpKind.store_kv),
    "act": (OpKind.load_act, OpKind.store_act),
    "tokens": (OpKind.load_tokens,),
    "qkv": (OpKind.store_qkv,),
    "attn_out": (OpKind.load_attn_out,),
}


def host_pinning(schedule: Schedule, device: str, default: bool) -> dict[str, bool]:
    """Pinned or pageable, per host buffer group, as the ops that move it say (pinned if
    any of them is; `default` for a group no link op moves). Pageable off CUDA."""
    out = {}
    for group, kinds in HOST_GROUPS.items():
        flags = [op.pinned for op in schedule.ops if op.kind in kinds]
        out[group] = device == "cuda" and (any(flags) if flags else default)
    return out


def _alloc(shape, dtype, pinned: bool) -> torch.Tensor:
    return torch.zeros(shape, dtype=dtype, pin_memory=pinned)


def gather(flat: torch.Tensor, ranges) -> torch.Tensor:
    """The elements of `flat` in `ranges` (flat order), as one new vector."""
    parts = [flat[a:b] for a, b in ranges]
    return torch.cat(parts) if parts else flat[:0].clone()


@dataclass
class HostBuffers:
    weights: list[torch.Tensor]  # per layer: the streamed elements (compact)
    cache: dict[tuple[int, int, str], torch.Tensor]  # (layer, mb, "kv"/"act") -> entries
    tokens: list[torch.Tensor]  # per micro-batch: [positions, gbs] int32
    qkv: list[torch.Tensor]  # CPU attention: 2 slots of [gbs, h + 2 hk]
    attn_out: list[torch.Tensor]  # CPU attention: 2 slots of [gbs, h]
    pinned: dict[str, bool] = field(default_factory=dict)  # by group (HOST_GROUPS)

    @classmethod
    def allocate(cls, point: PointSpec, plan: ExecPlan, weights: ModelWeights, prompt_ids: torch.Tensor,
                 pinned: dict[str, bool] | bool) -> HostBuffers:
        m, wl = point.model, point.workload
        pin = pinned if isinstance(pinned, dict) else dict.fromkeys(HOST_GROUPS, pinned)
        gbs, k = plan.gbs, point.policy.num_gpu_batches
        dtype = TORCH_DTYPES[m.dtype]
        wp = plan.weights
        host_w = []
        if wp.n_streamed:
            for flat in weights.layers:
                buf = _alloc((wp.n_streamed,), dtype, pin["weights"])
                buf.copy_(gather(flat, wp.streamed))
                host_w.append(buf)
        width = {"kv": 2 * m.kv_hidden, "act": m.hidden}
        cache = {
            (layer, j, c): _alloc((gbs, cap, width[c]) if plan.packed else (cap, gbs, width[c]), dtype, pin[c])
            for c, cap in plan.capacity.items() for layer in range(m.layers) for j in range(k)
        }
        tokens = []
        for j in range(k):
            t = _alloc((wl.prompt_len + wl.gen_len, gbs), torch.int32, pin["tokens"])
            t[:wl.prompt_len].copy_(prompt_ids[:, j * gbs:(j + 1) * gbs])
            tokens.append(t)
        cpu_attn = any(op.kind is OpKind.cpu_attention for op in plan.schedule.ops)
        qkv = [_alloc((gbs, m.hidden + 2 * m.kv_hidden), dtype, pin["qkv"]) for _ in range(2 if cpu_attn else 0)]
        attn_out = [_alloc((gbs, m.hidden), dtype, pin["attn_out"]) for _ in range(2 if cpu_attn else 0)]
        return cls(host_w, cache, tokens, qkv, attn_out, pin)

    def nbytes(self) -> dict[str, int]:
        """Host bytes by use: streamed weights, and the cache (K,V, activations, token ids,
        CPU-attention exchange)."""
        def size(ts):
            return sum(t.numel() * t.element_size() for t in ts)
        return {"weights": size(self.weights),
                "cache": size(self.cache.values()) + size(self.tokens) + size(self.qkv) + size(self.attn_out)}

    def memory(self) -> dict[str, str]:
        """"pinned" / "pageable" for the weights and for the cache (K,V and activations)."""
        def word(flags: list[bool]) -> str:
            return "pinned" if all(flags) else "pageable" if not any(flags) else "mixed"
        held = {key[2] for key in self.cache} or {"kv"}
        return {"weights": word([self.pinned.get("weights", False)]),
                "cache": word([self.pinned.get(g, False) for g in sorted(held)])}


@dataclass
class DeviceBuffers:
    device: torch.device
    plan: ExecPlan
    resident: list[torch.Tensor]  # per layer: the elements kept on the device (compact)
    weight_slots: list[torch.Tensor]
    loads: dict[OpKind, list[torch.Tensor]]  # 2 slots per load kind: [rows, width] (token ids [tokens, gbs])
    hidden: list[torch.Tensor]  # per micro-batch [max(prompt, 1 + prefix tokens), gbs, h]
    prefix_hidden: list[torch.Tensor]  # token-recompute: per micro-batch, rows 1.. of `hidden`
    new_kv: list[torch.Tensor]  # 2 slots [prompt, gbs, 2 hk]
    new_x: list[torch.Tensor]  # 2 slots [prompt, gbs, h] where the schedule stores activations
    rebuilt_kv: torch.Tensor  # recompute output [rows, 2 hk]
    scatter: dict[int, torch.Tensor]  # packed load op id -> flat context row (position * gbs + seq) per row
    qkv: list[torch.Tensor]  # CPU attention: 2 slots [gbs, h + 2 hk]
    attn_in: list[torch.Tensor]  # CPU attention: 2 slots [gbs, h]
    prompt_ids: list[torch.Tensor]  # per micro-batch [prompt, gbs]
    embed: torch.Tensor
    positions: torch.Tensor | None
    final_norm: dict[str, torch.Tensor]
    lm_head: torch.Tensor
    rotary: Rotary | None
    rope_positions: dict[int, torch.Tensor]  # load_act op id -> positions of its tokens (packed: rows)
    act_from_end: bool = False  # activation loads use the end of a slot shared with K,V (`cache_rows`)

    @classmethod
    def allocate(cls, point: PointSpec, plan: ExecPlan, weights: ModelWeights, prompt_ids: torch.Tensor,
                 device: torch.device) -> DeviceBuffers:
        m, wl = point.model, point.workload
        gbs, k = plan.gbs, point.policy.num_gpu_batches
        dtype = TORCH_DTYPES[m.dtype]
        wp = plan.weights

        def zeros(*shape, dt=dtype):
            return torch.zeros(shape, dtype=dt, device=device)

        h, hk2 = m.hidden, 2 * m.kv_hidden
        embed = weights.embed.to(device)  # a tied LM head is this same tensor
        rows = plan.max_rows
        tok = rows.get(OpKind.load_tokens, 0)
        rebuilt = max(rows.get(OpKind.load_act, 0), tok * gbs)
        prompt_rows = max(wl.prompt_len, 1)
        # token recompute's prefix hidden state of micro-batch j lives in rows 1.. of its hidden
        # state: those rows are free once the prefill's last layer has run for j, and both are
        # written only by compute-stream ops, which run in order
        hidden = [zeros(max(prompt_rows, 1 + tok), gbs, h) for _ in range(k)]
        cpu_attn = any(op.kind is OpKind.cpu_attention for op in plan.schedule.ops)
        stores_x = any(op.kind is OpKind.store_act for op in plan.schedule.ops)
        rotary = Rotary.of(m, device, dtype) if weights.positions is None else None
        loads_act = {i: a for i, a in plan.access.items() if plan.schedule.ops[i].kind is OpKind.load_act}
        rope_positions = {}
        if rotary is not None:
            rope_positions = {i: torch.as_tensor(a.positions, dtype=torch.long).to(device)
                              for i, a in loads_act.items()}
        # two cache load slots; where a schedule loads both forms, each is one buffer holding an
        # item's K,V from the front and its activations from the back (`cache_rows`), sized for
        # the largest K,V + activation rows one item loads (sim/memory.py)
        kv_rows, act_rows = rows.get(OpKind.load_kv, 0), rows.get(OpKind.load_act, 0)
        act_from_end = bool(kv_rows and act_rows)
        if act_from_end:
            per_item: dict[int, int] = {}
            for i, a in plan.access.items():
                kind = plan.schedule.ops[i].kind
                if kind in (OpKind.load_kv, OpKind.load_act):
                    item = plan.item(plan.schedule.ops[i])
                    per_item[item] = per_item.get(item, 0) + a.rows(gbs) * (hk2 if kind is OpKind.load_kv else h)
            flat = [zeros(max(per_item.values())) for _ in range(2)]
            cache_slots = {OpKind.load_kv: [b[:kv_rows * hk2].view(kv_rows, hk2) for b in flat],
                           OpKind.load_act: [b[b.numel() - act_rows * h:].view(act_rows, h) for b in flat]}
        else:
            cache_slots = {OpKind.load_kv: [zeros(kv_rows, hk2) for _ in range(2)],
                           OpKind.load_act: [zeros(act_rows, h) for _ in range(2)]}
        scatter = {}
        if plan.packed:
            for i, a in plan.access.items():
                if plan.schedule.ops[i].kind in (OpKind.load_kv, OpKind.load_act):
                    pos, seq = a.row_index(gbs)
                    scatter[i] = torch.as_tensor(pos * gbs + seq, dtype=torch.long).to(device)
        return cls(
            device=device,
            plan=plan,
            resident=[gather(flat, wp.resident).to(device) for flat in weights.layers] if wp.n_resident else [],
            weight_slots=[zeros(wp.n_streamed) for _ in range(2)] if wp.n_streamed else [],
            loads={**cache_slots, OpKind.load_tokens: [zeros(tok, gbs, dt=torch.int32) for _ in range(2)]},
            hidden=hidden,
            prefix_hidden=[x[1:1 + tok] for x in hidden],
            new_kv=[zeros(prompt_rows, gbs, hk2) for _ in range(2)],
            new_x=[zeros(prompt_rows, gbs, h) for _ in range(2 if stores_x else 0)],
            rebuilt_kv=zeros(rebuilt, hk2),
            scatter=scatter,
            qkv=[zeros(gbs, h + hk2) for _ in range(2 if cpu_attn else 0)],
            attn_in=[zeros(gbs, h) for _ in range(2 if cpu_attn else 0)],
            prompt_ids=[prompt_ids[:, j * gbs:(j + 1) * gbs].to(device) for j in range(k)],
            embed=embed,
            positions=None if weights.positions is None else weights.positions.to(device),
            final_norm={n: t.to(device) for n, t in weights.final_norm.items()},
            lm_head=embed if weights.lm_head is weights.embed else weights.lm_head.to(device),
            rotary=rotary,
            rope_positions=rope_positions,
            act_from_end=act_from_end,
        )

    def cache_rows(self, kind: OpKind, slot: int, n: int) -> torch.Tensor:
        """The `n` rows of cache load slot `slot` that a load of `kind` uses: the first rows of a
        K,V slot, the last rows of an activation slot that shares its buffer with K,V."""
        buf = self.loads[kind][slot]
        if kind is OpKind.load_act and self.act_from_end:
            return buf[buf.shape[0] - n:]
        return buf[:n]

    def layer_weights(self, layer: int, slot: int) -> dict[str, torch.Tensor]:
        """Named views of `layer`'s weights: resident elements and/or the streamed ones in `slot`."""
        wp = self.plan.weights
        src = {"r": self.resident[layer] if self.resident else None,
               "s": self.weight_slots[slot] if self.weight_slots else None}
        out = {}
        for name, pieces in wp.pieces.items():
            shape = wp.shapes[name]
            if len(pieces) == 1:
                where, a, b = pieces[0]
                out[name] = src[where][a:b].view(shape)
            else:
                out[name] = torch.cat([src[w][a:b] for w, a, b in pieces]).view(shape)
        return out

