"""hssim: a discrete-event simulator of LLM inference with host-memory offloading."""

__version__ = "0.1.0"
