"""Online serving: request arrivals, continuous batching over a paged KV cache, and the
policies that cope when the KV cache of the running requests outgrows GPU memory
(vLLM's KV swapping and recomputation, Oneiros' parameter remapping).

Every compute and transfer time comes from the one cost model (`hssim.sim.costs`).
"""

from .engine import ServingRun, run_serving
from .policies import ServingPolicyKind, ServingPolicySpec
from .scenario import ServingPoint, load_serving_points
from .workload import Request, ServingWorkload

__all__ = [
    "Request", "ServingPoint", "ServingPolicyKind", "ServingPolicySpec", "ServingRun", "ServingWorkload",
    "load_serving_points", "run_serving",
]
