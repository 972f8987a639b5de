"""hssim.sim: specs and presets, the schedule IR, policies, the SimPy engine, metrics."""
