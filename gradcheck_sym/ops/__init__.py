"""The op rules: one entry per operation, read by every stage."""

from .table import BINOPS, COMPARISONS, CONSTANTS, FUNCTIONS, OPS, UNARYOPS, Op, lookup, suggest

__all__ = ["Op", "OPS", "FUNCTIONS", "BINOPS", "UNARYOPS", "COMPARISONS", "CONSTANTS", "lookup", "suggest"]
