"""Code health: complexity, maintainability and size metrics of Python code, and reports."""

from pyagent.health.auditor import (
    AuditReport,
    CodeHealthAuditor,
    FileHealth,
    FunctionHealth,
    Halstead,
    Offender,
    RawMetrics,
    gate,
)

__all__ = [
    "AuditReport",
    "CodeHealthAuditor",
    "FileHealth",
    "FunctionHealth",
    "Halstead",
    "Offender",
    "RawMetrics",
    "gate",
]
