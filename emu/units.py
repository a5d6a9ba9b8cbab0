"""SI units. Inside emu every quantity is SI (bytes, seconds, watts, FLOP/s).

Multiply to convert into SI, divide to convert out of it:

>>> 900 * GBps
900000000000.0
>>> 2.5e15 / TFLOPS
2500.0
"""

__all__ = [
    "KB",
    "MB",
    "GB",
    "TB",
    "GiB",
    "GBps",
    "TBps",
    "Gbps",
    "TFLOPS",
    "PFLOPS",
    "ns",
    "us",
    "ms",
    "W",
    "kW",
    "MW",
    "BYTES_PER_ELEMENT",
    "PRECISIONS",
]

# Sizes (decimal, as vendors quote them)
KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
GiB = 2.0**30

# Bandwidth
GBps = 1e9  # bytes per second
TBps = 1e12
Gbps = 1e9 / 8  # bits per second -> bytes per second

# Compute
TFLOPS = 1e12
PFLOPS = 1e15

# Time
ns = 1e-9
us = 1e-6
ms = 1e-3

# Power
W = 1.0
kW = 1e3
MW = 1e6

# Bytes per element of each precision emu knows.
BYTES_PER_ELEMENT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "fp4": 0.5}
PRECISIONS = ("bf16", "fp16", "fp8", "int8", "fp4")
