"""LLM agents: reduce the complexity of one function, or add missing docstrings to one file.

Both ask for a structured edit, JSON under a schema (see ``pyagent.agents.edits``): the function's new
definition, or one docstring per name. LibCST applies it; the agents guard it (the refactor really lowers
the function's complexity; the docstring edit changes nothing but docstrings) and repair at most three
times before giving up with the last error.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyagent.agents.base import BaseAgent
from pyagent.agents.docstrings import (
    definition_source,
    docstring_problem,
    missing_docstrings,
    strip_docstrings,
)
from pyagent.agents.edits import EditError, add_docstrings, edit_with_repairs, replace_function
from pyagent.agents.mixins.auditor import AuditorMixin
from pyagent.agents.worker import AgentOutcome
from pyagent.model.verification import Usage

if TYPE_CHECKING:
    from pyagent.agents.llm.base import LLMClient
    from pyagent.health import CodeHealthAuditor
    from pyagent.model.knowledge import KnowledgeBackend
    from pyagent.model.task import AgentTask

__all__ = ["DocstringAgent", "RefactorAgent", "missing_docstrings", "strip_docstrings"]

SYSTEM = "You are a careful senior Python engineer. You make small, behaviour-preserving edits."


# A sentence: it starts with a capital letter and holds no control characters or backslashes (the text
# becomes a docstring literal as it is) and no markup characters (`docstring_problem` refuses them too,
# for endpoints that ignore schemas), and it ends a sentence. A small model held to it cannot open with
# stray punctuation, nor stop mid-sentence at the length limit.
DOCSTRING_PATTERN = r"^[A-Z][^\x00-\x1f\\{}<>|]{8,158}[.!?]$"


def docstring_schema(names: list[str]) -> dict[str, Any]:
    """One short docstring per wanted name: ``{"grade": "Letter grade ..."}``."""
    return {"type": "object", "properties": {n: {"type": "string", "pattern": DOCSTRING_PATTERN} for n in names},
            "required": names, "additionalProperties": False}


REFACTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"code": {"type": "string", "minLength": 10, "maxLength": 8000}},
    "required": ["code"], "additionalProperties": False,
}


def _feedback(task: AgentTask) -> str:
    """For a retry (a child task of a rejected attempt): why the verification gate rejected the last edit."""
    reason = task.params.get("rejected_because")
    if not reason:
        return ""
    return f"A previous edit was rejected by the project's checks: {reason}\nAvoid that this time.\n\n"


def _complexities(auditor: CodeHealthAuditor, source: str, path: str) -> dict[str, int]:
    return {f.qualname: f.complexity for f in auditor.audit_source(source, path).functions}


class RefactorAgent(AuditorMixin, BaseAgent):
    """Lowers the complexity of ``task.params["function"]`` (a qualname) below what it was."""

    name = "refactor"
    capabilities = frozenset({"llm-refactor"})
    commands: tuple[str, ...] = ()
    retries = 1

    def __init__(
        self,
        llm: LLMClient,
        *,
        max_complexity: int = 10,
        max_repairs: int = 3,
        auditor: CodeHealthAuditor | None = None,
        knowledge: KnowledgeBackend | None = None,
    ) -> None:
        super().__init__(knowledge=knowledge)
        self.llm = llm
        self.max_complexity = max_complexity
        self.max_repairs = max_repairs
        self._auditor = auditor

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        path = task.target
        qualname = str(task.params.get("function", ""))
        source = (workspace / path).read_text(encoding="utf-8")
        before = _complexities(self.auditor, source, path)
        if qualname not in before:
            return AgentOutcome(note="", error=f"function {qualname!r} not found in {path}")
        old = before[qualname]

        def validate(new: str) -> str | None:
            after = _complexities(self.auditor, new, path)
            if qualname not in after:
                return f"the function {qualname} must keep its name and signature"
            if after[qualname] >= old:
                return f"complexity of {qualname} is still {after[qualname]} (was {old}); it must go down"
            worst = max((c for q, c in after.items() if q not in before), default=0)
            if worst > max(self.max_complexity, after[qualname]):
                return f"a new helper has complexity {worst}; keep helpers simple"
            return None

        prompt = (
            f"File `{path}`:\n```python\n{source}\n```\n\nThe function `{qualname}` has cyclomatic complexity "
            f"{old} (threshold {self.max_complexity}). Refactor it to lower its complexity without changing "
            f"behaviour: early returns, lookup tables, small helper functions. Keep its name and signature.\n\n"
            + _feedback(task)
            + 'Answer with a JSON object {"code": "..."} whose code is the complete new definition of '
            + f"`{qualname.rsplit('.', 1)[-1]}`, preceded by any new helper functions."
        )
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        new, error, usage = await edit_with_repairs(
            self.llm, messages, REFACTOR_SCHEMA, lambda data: replace_function(source, qualname, str(data["code"])),
            validate, max_repairs=self.max_repairs, max_tokens=4096,
        )
        if new is None:
            return AgentOutcome(note="", usage=usage, error=f"no valid refactoring of {qualname}: {error}")
        (workspace / path).write_text(new, encoding="utf-8")
        after = _complexities(self.auditor, new, path)[qualname]
        return AgentOutcome(
            note=f"refactored {qualname}: complexity {old} -> {after} (LLM {self.llm.model})", usage=usage
        )


class DocstringAgent(BaseAgent):
    """Adds concise docstrings (why, not what) to ``task.params["names"]`` in ``task.target``."""

    name = "docstring"
    capabilities = frozenset({"llm-docstring"})
    commands: tuple[str, ...] = ()
    retries = 1

    def __init__(self, llm: LLMClient, *, max_repairs: int = 3, knowledge: KnowledgeBackend | None = None) -> None:
        super().__init__(knowledge=knowledge)
        self.llm = llm
        self.max_repairs = max_repairs

    async def run(self, task: AgentTask, workspace: Path) -> AgentOutcome:
        path = task.target
        source = (workspace / path).read_text(encoding="utf-8")
        wanted = [str(n) for n in task.params.get("names", [])] or missing_docstrings(source)
        if not wanted:
            return AgentOutcome(note="", error=f"no missing docstrings in {path}")
        shape = strip_docstrings(source)
        missing_before = set(missing_docstrings(source))

        def validate(new: str) -> str | None:
            if strip_docstrings(new) != shape:
                return "only docstrings may be added; the code itself must stay exactly the same"
            if len(missing_docstrings(new)) >= len(missing_before):
                return "no docstring was added"
            return None

        # One request per definition, showing its own code: asked for a whole file's names at once, a
        # small model gave every function the same sentence about the module.
        texts: dict[str, str] = {}
        usage = Usage()
        errors: list[str] = []
        last: dict[str, str] = {}
        for name in wanted:
            def apply(data: dict[str, Any], name: str = name) -> str:
                if set(data) != {name}:
                    add_docstrings(source, {str(n): str(t) for n, t in data.items()})  # names what does not exist
                    raise EditError(f"answer with the docstring of {name} only")
                text = last[name] = str(data[name])
                if problem := docstring_problem(source, name, text):
                    raise EditError(problem)
                if text.strip() in (t.strip() for t in texts.values()):
                    raise EditError(f"the docstring of {name} repeats another one; say what {name} itself is for")
                return add_docstrings(source, {name: text})

            new, error, used = await edit_with_repairs(
                self.llm, self._messages(task, path, source, name), docstring_schema([name]), apply, validate,
                max_repairs=self.max_repairs, max_tokens=256,
            )
            usage += used
            if new is None:
                errors.append(error)
                continue
            texts[name] = last[name]
        if not texts:
            return AgentOutcome(note="", usage=usage, error=f"no valid docstring edit: {errors[-1]}")
        new = add_docstrings(source, texts)
        (workspace / path).write_text(new, encoding="utf-8")
        added = len(missing_before) - len(missing_docstrings(new))
        return AgentOutcome(note=f"added {added} docstring(s) to {path} (LLM {self.llm.model})", usage=usage)

    @staticmethod
    def _messages(task: AgentTask, path: str, source: str, name: str) -> list[dict[str, str]]:
        code = definition_source(source, name)
        where = "the module" if name == "<module>" else f"`{name}`"
        prompt = (
            f"From file `{path}`:\n```python\n{code}\n```\n\nWrite a concise docstring for {where}: one or two "
            f"lines saying why it exists, in terms of what it does with its inputs, not what each line does.\n\n"
            + _feedback(task)
            + f'Answer with a JSON object {{"{name}": "..."}}.'
        )
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
