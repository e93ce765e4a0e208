"""The code-health auditor, built on first use so that importing an agent or the gate stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyagent.health import CodeHealthAuditor


class AuditorMixin:
    """``self.auditor``: the one passed in as ``_auditor``, else a default ``CodeHealthAuditor`` made once."""

    _auditor: CodeHealthAuditor | None = None

    @property
    def auditor(self) -> CodeHealthAuditor:
        if self._auditor is None:
            from pyagent.health import CodeHealthAuditor

            self._auditor = CodeHealthAuditor()
        return self._auditor
