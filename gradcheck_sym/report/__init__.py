"""The outputs: report records (data) and their renderers (text, JSON, HTML, Graphviz)."""

from .records import KIND_SEVERITY, SCHEMA_VERSION, Example, Finding, NodeRow, Report, Severity

__all__ = ["SCHEMA_VERSION", "Severity", "Example", "Finding", "NodeRow", "Report", "KIND_SEVERITY"]
