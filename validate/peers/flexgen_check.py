"""hssim beside FlexGen's LP cost model on FlexGen's T4 box: same policies, both predictions.

Run `python -m hssim.validate.peers.flexgen_check --out reports/claims` to rewrite
`flexgen_peer.csv` and `flexgen_peer_table.md`. Policies: the placements FlexGen's
benchmark suite (`benchmark/flexgen/bench_suite.py`) uses for OPT-6.7B/30B/175B at
prompt 512 and 1024, 32 output tokens, and the ones FlexGen's own search picks.
hssim has no disk tier: a placement with a disk share is run with that share on the
host instead, on a T4 box with 1.5 TB of host memory, and says so in `note`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ...sim.api import run_point
from ...sim.memory import MemoryPlanError
from ...sim.presets import hardware_preset, model_preset
from ...sim.schedule import Stream
from ...sim.specs import HardwareSpec, PointSpec, PolicySpec, WorkloadSpec
from .flexgen_lp import FlexGenPolicy, LPPrediction, available, lp_predict, lp_search

GEN_LEN = 32
#: FlexGen's bench_suite.py placements (suite_6b7_1x1, suite_30b_1x1, suite_175b_1x1)
BENCH: dict[tuple[str, int], FlexGenPolicy] = {
    ("opt-6.7b", 512): FlexGenPolicy(2, 1, 100, 0, 100, 0, 100, 0),
    ("opt-6.7b", 1024): FlexGenPolicy(1, 1, 100, 0, 100, 0, 100, 0),
    ("opt-30b", 512): FlexGenPolicy(48, 3, 20, 80, 0, 100),
    ("opt-30b", 1024): FlexGenPolicy(20, 4, 4, 96, 0, 100),
    ("opt-175b", 512): FlexGenPolicy(32, 8, 0, 50, 0, 0, pin_weight=False),
    ("opt-175b", 1024): FlexGenPolicy(12, 12, 0, 50, 0, 0, pin_weight=False),
}


def no_disk(policy: FlexGenPolicy) -> FlexGenPolicy:
    """The same policy with its disk shares moved to the host."""
    return FlexGenPolicy(policy.gpu_batch_size, policy.num_gpu_batches, policy.w_gpu, 100 - policy.w_gpu,
                         policy.cache_gpu, 100 - policy.cache_gpu, policy.act_gpu, 100 - policy.act_gpu,
                         policy.pin_weight)


def big_host(hw: HardwareSpec, host_bytes: int = 1536 * 10**9) -> HardwareSpec:
    return hw.model_copy(update={"host": hw.host.model_copy(update={"memory_bytes": host_bytes}),
                                 "name": f"{hw.name}+{host_bytes // 10**9}GB-host"})


def hssim_point(model: str, hw: HardwareSpec, prompt_len: int, policy: FlexGenPolicy,
                kind: str = "flexgen") -> PointSpec:
    cache_on_host = policy.cache_gpu < 100
    pol = PolicySpec(kind=kind, gpu_batch_size=policy.gpu_batch_size, num_gpu_batches=policy.num_gpu_batches,
                     weights_gpu_percent=policy.w_gpu, cache_gpu_percent=policy.cache_gpu,
                     cpu_attention=cache_on_host and policy.cache_gpu == 0, pinned=policy.pin_weight)
    return PointSpec(scenario="flexgen-peer", model=model_preset(model), hardware=hw,
                     workload=WorkloadSpec(batch=policy.batch, prompt_len=prompt_len, gen_len=GEN_LEN), policy=pol)


def _hssim(point: PointSpec) -> dict:
    try:
        run = run_point(point, engine="list")
    except MemoryPlanError as e:
        return {"error": str(e).split(": ", 1)[-1][:160]}
    m, sched, dur = run.metrics, run.schedule, run.result.duration_ns
    # busy seconds of each engine per decode (layer, step): what the LP's per-layer terms compare to
    per = (GEN_LEN - 1) * point.model.layers
    decode = sched.step_col > 0
    busy = {f"{s.value}_busy_layer_s": float(dur[decode & (sched.stream_code == i)].sum()) / 1e9 / per
            for i, s in enumerate(Stream) if s is not Stream.d2h}
    return {"tok_s": m["throughput_tok_s"], "prefill_s": m["prefill_s"], "decode_s": m["decode_s"],
            "decode_layer_s": m["decode_s"] / per, **busy}


def compare(model: str, prompt_len: int, source: str, policy: FlexGenPolicy) -> dict:
    hw = hardware_preset("t4-pcie3")
    note = []
    run_policy = policy
    if policy.uses_disk:
        run_policy, hw = no_disk(policy), big_host(hw)
        note.append("disk share moved to host (hssim has no disk tier), host 1.5 TB")
    lp: LPPrediction = lp_predict(model_preset(model), hw, prompt_len, GEN_LEN, run_policy)
    row = {"model": model, "prompt_len": prompt_len, "source": source, "policy": policy.label(),
           "run_as": run_policy.label(), "lp_tok_s": lp.throughput_tok_s, "lp_prefill_s": lp.prefill_s,
           "lp_decode_s": lp.decode_s, "lp_ctogg_s": lp.ctogg_s, "lp_compg_s": lp.compg_s, "lp_tgen_s": lp.tgen_s}
    if policy.uses_disk:
        row["lp_tok_s_with_disk"] = lp_predict(model_preset(model), hardware_preset("t4-pcie3"), prompt_len,
                                               GEN_LEN, policy).throughput_tok_s
    flex = _hssim(hssim_point(model, hw, prompt_len, run_policy))
    ideal = _hssim(hssim_point(model, hw, prompt_len, run_policy, kind="kv-only"))
    row.update({f"hssim_{k}": v for k, v in flex.items() if k != "error"})
    row["hssim_kv_only_tok_s"] = ideal.get("tok_s")
    if "error" in flex:
        note.append(f"hssim: {flex['error']}")
    if "hssim_tok_s" in row:
        row["ratio_hssim_over_lp"] = row["hssim_tok_s"] / lp.throughput_tok_s
        row["prefill_ratio"] = row["hssim_prefill_s"] / lp.prefill_s
        row["decode_ratio"] = row["hssim_decode_s"] / lp.decode_s
    row["note"] = "; ".join(note)
    return row


def run(models=("opt-6.7b", "opt-30b", "opt-175b"), prompts=(512, 1024), search: bool = True) -> pd.DataFrame:
    rows = []
    for model in models:
        for prompt_len in prompts:
            rows.append(compare(model, prompt_len, "bench_suite", BENCH[(model, prompt_len)]))
            if search:
                picked = lp_search(model_preset(model), hardware_preset("t4-pcie3"), prompt_len, GEN_LEN)
                if picked is not None:
                    rows.append(compare(model, prompt_len, "lp_search", picked))
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    cols = ["model", "prompt_len", "source", "policy", "lp_tok_s", "hssim_tok_s", "ratio_hssim_over_lp",
            "lp_prefill_s", "hssim_prefill_s", "lp_decode_s", "hssim_decode_s", "hssim_kv_only_tok_s", "note"]
    out = df.reindex(columns=cols)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in out.iterrows():
        cells = [f"{v:.3g}" if isinstance(v, float) else ("" if v is None else str(v)) for v in r]
        lines.append("| " + " | ".join(c if c != "nan" else "" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/claims")
    ap.add_argument("--no-search", action="store_true")
    args = ap.parse_args()
    if not available():
        raise SystemExit("FlexGen's cost model is not installed: pip install flexgen==0.1.8 pulp (torch==2.13.0 first)")
    df = run(search=not args.no_search)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "flexgen_peer.csv", index=False)
    (out / "flexgen_peer_table.md").write_text(to_markdown(df))
    print(to_markdown(df))


if __name__ == "__main__":
    main()
