"""hw: run the simulator's schedules with real kernels, real copies and real streams.

- `weights`: the flat per-layer parameter layout of a `ModelSpec` and random (or
  Hugging Face) weights of the real shapes;
- `kernels`: one decoder layer in PyTorch (OPT and LLaMA), split the way the
  schedule's op kinds split it;
- `plan`: static facts about a schedule the executor needs (which host-cache
  positions each load/store touches, derived from the point's cache scheme; which
  weight ranges each `load_weights` moves) and a happens-before check that every
  host read is ordered after its writer by the schedule itself;
- `buffers`: host buffers (pinned or pageable) and device double buffers;
- `runner`: what one op does, by kind, on those buffers;
- `executor`: one issuing thread per schedule stream, CUDA or CPU backend, timing
  into the simulator's Timeline schema;
- `numerics`: greedy generation through these kernels against Hugging Face's OPT.

The `hssim measure` command that drives it is `hssim.cli.measure`.

Everything that imports torch is imported lazily by the callers, so `hssim` works
without torch installed.
"""
