"""Which numeric precision inference runs at, chosen from what the CPU reports at run time.

``fp32`` is the feature contract (equal to the Keras reference). ``bf16`` trades a small feature
drift for speed, and can only pay off where the CPU computes bf16 natively (AVX-512 BF16 or AMX);
elsewhere it is emulated, so asking for it there is an error rather than a silent slowdown.

``auto`` picks bf16 only where it was measured faster: with AMX's bf16 tiles. With AVX-512 BF16
alone (dot products only), OpenVINO ran MobileNetV2 slower at bf16 than at fp32 (one core, batch
8: about 100 against 137 img/s on an Intel Xeon with avx512_bf16 and no AMX), so auto keeps fp32
there and says so; ``--precision bf16`` still forces it.

``int8`` runs a model quantized by `verger quantize` (`emr_job.engines.int8_model`). Its features
depend on that model's calibration photos, so it is never picked by ``auto``: it is asked for by
name, with the model. It runs on any CPU here, fastest with VNNI's int8 dot products (measured
with avx512_vnni: inference 2.5x fp32); without VNNI the choice says so.
"""
from __future__ import annotations

from dataclasses import dataclass

from contract.layout import DEFAULT_PRECISION, PRECISIONS

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # bf16 is native: it may be asked for
FAST_BF16_FLAGS = ("amx_bf16",)  # bf16 is faster than fp32 here: auto picks it
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products in one instruction
CPUINFO = "/proc/cpuinfo"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # "fp32", "bf16" or "int8": what the engine runs
    reason: str  # one sentence for logs and reports


def cpu_flags(cpuinfo: str = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU in /proc/cpuinfo; empty where the file does not exist.

    Examples
    --------
    >>> cpu_flags("/nonexistent")
    frozenset()
    """
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as file:
            for line in file:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def choose_precision(requested: str, flags: frozenset[str]) -> PrecisionChoice:
    """Resolve `requested` (one of PRECISIONS) against the CPU's flags.

    Examples
    --------
    >>> choose_precision("auto", frozenset({"avx2", "avx512_bf16", "amx_bf16"})).precision
    'bf16'
    >>> choose_precision("auto", frozenset({"avx2"}))
    PrecisionChoice(precision='fp32', reason='auto: fp32, the CPU reports neither avx512_bf16 nor amx_bf16')
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    native = sorted(flag for flag in BF16_FLAGS if flag in flags)
    if requested == "fp32":
        return PrecisionChoice("fp32", "fp32 requested: the exact feature contract")
    if requested == "int8":
        dots = sorted(flag for flag in INT8_DOT_FLAGS if flag in flags)
        if dots:
            return PrecisionChoice("int8", f"int8 requested; the CPU reports {', '.join(dots)}")
        return PrecisionChoice("int8", f"int8 requested; the CPU reports none of {', '.join(INT8_DOT_FLAGS)}, so "
                                       "int8 runs without one-instruction dot products (its speed-up was "
                                       "measured with them)")
    if requested == "bf16":
        if not native:
            raise ValueError(
                f"bf16 requested but this CPU reports neither {' nor '.join(BF16_FLAGS)}: bf16 would be "
                "emulated (slower than fp32); use --precision fp32 or auto"
            )
        return PrecisionChoice("bf16", f"bf16 requested; the CPU reports {', '.join(native)}")
    fast = sorted(flag for flag in FAST_BF16_FLAGS if flag in flags)
    if fast:
        return PrecisionChoice("bf16", f"auto: bf16, the CPU reports {', '.join(fast)}")
    if native:
        return PrecisionChoice(
            "fp32", f"auto: fp32, the CPU reports {', '.join(native)} but not {' or '.join(FAST_BF16_FLAGS)}, "
                    "where bf16 ran slower than fp32 (--precision bf16 forces it)")
    return PrecisionChoice("fp32", f"auto: fp32, the CPU reports neither {' nor '.join(BF16_FLAGS)}")


def choose_here(requested: str) -> PrecisionChoice:
    """`choose_precision` against this machine's CPU (the driver's: one choice per batch)."""
    return choose_precision(requested, cpu_flags())
