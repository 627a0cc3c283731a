"""The outputs: report records (data) and their renderers (text, JSON, HTML, Graphviz)."""

from .records import KIND_SEVERITY, SCHEMA_VERSION, CutLocation, Example, Finding, NodeRow, Report, Severity

__all__ = ["SCHEMA_VERSION", "Severity", "Example", "CutLocation", "Finding", "NodeRow", "Report", "KIND_SEVERITY"]
