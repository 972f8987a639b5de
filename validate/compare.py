"""Join a simulated and a measured timeline op by op, and measure the simulator's error.

APE is the absolute percentage error |predicted - measured| / measured. A decode
step's time is the end of its last op minus the end of the previous step's last
op (the prefill's for step 1). Overlap is the share of link-busy time (H2D or
D2H) during which the compute stream was also busy.

The repeat spread is the same error with another timed run of the same point as
the prediction: how far the measurement moves between repeats, a floor under
what any prediction of one run can reach.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..sim.costs.contention import union_intervals

KEYS = ["op_id", "stream", "kind", "layer", "step", "micro_batch"]


def ape(pred, meas):
    pred, meas = np.asarray(pred, float), np.asarray(meas, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(meas > 0, np.abs(pred - meas) / meas, np.nan)


def join_ops(sim_tl: pd.DataFrame, meas_tl: pd.DataFrame) -> pd.DataFrame:
    """One row per op: its simulated and measured start, end and duration, and the duration's error."""
    if len(sim_tl) != len(meas_tl):
        raise ValueError(f"timelines differ in length: simulated {len(sim_tl)}, measured {len(meas_tl)} ops")
    j = sim_tl[KEYS + ["start_s", "end_s"]].merge(meas_tl[KEYS + ["start_s", "end_s"]], on=KEYS,
                                                  suffixes=("_sim", "_meas"), validate="one_to_one")
    if len(j) != len(sim_tl):
        raise ValueError("the simulated and measured timelines are of different schedules")
    j["dur_sim_s"] = j["end_s_sim"] - j["start_s_sim"]
    j["dur_meas_s"] = j["end_s_meas"] - j["start_s_meas"]
    j["err_s"] = j["dur_sim_s"] - j["dur_meas_s"]
    j["ape"] = ape(j["dur_sim_s"], j["dur_meas_s"])
    return j


def step_times(tl: pd.DataFrame) -> pd.Series:
    """Seconds per step (0 = prefill), indexed by step."""
    ends = tl.groupby("step")["end_s"].max().sort_index()
    return ends.diff().fillna(ends.iloc[0])


def _union(intervals: np.ndarray) -> np.ndarray:
    return union_intervals(intervals[:, 0], intervals[:, 1]) if len(intervals) else intervals.reshape(0, 2)


def _length(iv: np.ndarray) -> float:
    return float((iv[:, 1] - iv[:, 0]).sum()) if len(iv) else 0.0


def _intersection(a: np.ndarray, b: np.ndarray) -> float:
    i = j = 0
    total = 0.0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i, 0], b[j, 0]), min(a[i, 1], b[j, 1])
        if hi > lo:
            total += hi - lo
        if a[i, 1] < b[j, 1]:
            i += 1
        else:
            j += 1
    return total


def overlap(tl: pd.DataFrame) -> dict[str, float]:
    """Link busy, compute busy, and the share of link time hidden under compute (decode steps only)."""
    dec = tl[tl["step"] >= 1]

    def busy(mask) -> np.ndarray:
        return _union(dec.loc[mask, ["start_s", "end_s"]].to_numpy(float))

    link = busy(dec["stream"].isin(["h2d", "d2h"]))
    comp = busy(dec["stream"] == "compute")
    link_s, both_s = _length(link), _intersection(link, comp)
    return {"link_busy_s": link_s, "compute_busy_s": _length(comp), "overlap_s": both_s,
            "hidden_link_share": both_s / link_s if link_s > 0 else float("nan")}


def point_errors(sim_tl: pd.DataFrame, meas_tl: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame]:
    """Makespan error of one point, and its per-decode-step errors."""
    sim_m, meas_m = float(sim_tl["end_s"].max()), float(meas_tl["end_s"].max())
    ss, ms = step_times(sim_tl), step_times(meas_tl)
    steps = pd.DataFrame({"step": ss.index, "sim_s": ss.to_numpy(), "meas_s": ms.reindex(ss.index).to_numpy()})
    steps["ape"] = ape(steps["sim_s"], steps["meas_s"])
    dec = steps[steps["step"] >= 1]
    return ({"makespan_sim_s": sim_m, "makespan_meas_s": meas_m, "e2e_ape": float(ape(sim_m, meas_m)),
             "prefill_sim_s": float(ss.iloc[0]), "prefill_meas_s": float(ms.iloc[0]),
             "step_ape_median": float(dec["ape"].median()) if len(dec) else float("nan")}, steps)


def repeat_spread(compared_tl: pd.DataFrame, repeat_tls: list[pd.DataFrame]) -> tuple[float, pd.Series]:
    """(end-to-end, per step) APE of the other timed runs against the compared one, median over them;
    NaN where there was only one run."""
    ms = step_times(compared_tl)
    others = [tl for tl in repeat_tls if not tl[["start_s", "end_s"]].equals(compared_tl[["start_s", "end_s"]])]
    if not others:
        return float("nan"), pd.Series(np.nan, index=ms.index)
    meas_m = float(compared_tl["end_s"].max())
    e2e = float(np.median([ape(float(tl["end_s"].max()), meas_m) for tl in others]))
    per_step = np.median(np.vstack([ape(step_times(tl).reindex(ms.index).to_numpy(), ms.to_numpy())
                                    for tl in others]), axis=0)
    return e2e, pd.Series(per_step, index=ms.index)


#: buckets of the share of a compute op's measured interval that a weight copy overlapped
OVERLAP_BUCKETS = (0.0, 0.1, 0.5, 0.9, 1.0)


def _copy_share(ops: pd.DataFrame, which: pd.Series, side: str) -> pd.Series:
    """For the ops `which` selects (indexed like them): the share of their `side` ("sim" or "meas")
    interval that a `load_weights` of the same point overlapped."""
    share = pd.Series(0.0, index=ops.index[which])
    for _, d in ops.groupby("point") if "point" in ops else [(0, ops)]:
        iv = _union(d.loc[d["kind"] == "load_weights", [f"start_s_{side}", f"end_s_{side}"]].to_numpy(float))
        for i, s, e in d.loc[which.loc[d.index], [f"start_s_{side}", f"end_s_{side}"]].itertuples(name=None):
            share[i] = _intersection(np.array([[s, e]]), iv) / (e - s) if e > s else 0.0
    return share


def error_by_copy_overlap(ops: pd.DataFrame) -> pd.DataFrame:
    """Compute-stream ops by how much of their measured time a weight copy overlapped: how many, the
    simulated share (what the contention blend charged for), and simulated over measured time."""
    which = ops["stream"] == "compute"
    edges = list(OVERLAP_BUCKETS)
    labels = [f"{a:.0%}-{b:.0%}" for a, b in zip(edges, edges[1:], strict=False)]
    df = pd.DataFrame({"measured_copy_share": pd.cut(_copy_share(ops, which, "meas"), [-1e-9, *edges[1:]],
                                                     labels=labels),
                       "sim_share": _copy_share(ops, which, "sim"), "sim_s": ops.loc[which, "dur_sim_s"],
                       "meas_s": ops.loc[which, "dur_meas_s"]})
    g = df.groupby("measured_copy_share", observed=False).agg(
        ops=("sim_s", "size"), sim_copy_share=("sim_share", "mean"), sim_total_s=("sim_s", "sum"),
        meas_total_s=("meas_s", "sum"))
    g["sim_over_meas"] = g["sim_total_s"] / g["meas_total_s"]
    return g.reset_index()


def kind_errors(ops: pd.DataFrame) -> pd.DataFrame:
    g = ops.groupby("kind")
    out = pd.DataFrame({
        "ops": g.size(),
        "ape_median": g["ape"].median(),
        "ape_p95": g["ape"].quantile(0.95),
        "sim_total_s": g["dur_sim_s"].sum(),
        "meas_total_s": g["dur_meas_s"].sum(),
    })
    out["sim_over_meas"] = out["sim_total_s"] / out["meas_total_s"]
    return out.sort_values("meas_total_s", ascending=False).reset_index()


def summary(points: pd.DataFrame, steps: pd.DataFrame) -> dict[str, float]:
    dec = steps[steps["step"] >= 1]
    return {
        "points": int(len(points)),
        "e2e_ape_median": float(points["e2e_ape"].median()),
        "e2e_ape_p95": float(points["e2e_ape"].quantile(0.95)),
        "step_ape_median": float(dec["ape"].median()),
        "step_ape_p95": float(dec["ape"].quantile(0.95)),
        "decode_steps": int(len(dec)),
        **({"repeat_e2e_ape_median": float(points["repeat_e2e_ape"].median()),
            "repeat_e2e_ape_p95": float(points["repeat_e2e_ape"].quantile(0.95)),
            "repeat_step_ape_median": float(dec["repeat_ape"].median()),
            "repeat_step_ape_p95": float(dec["repeat_ape"].quantile(0.95))}
           if "repeat_ape" in steps and dec["repeat_ape"].notna().any() else {}),
    }
