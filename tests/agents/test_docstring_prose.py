"""`docstring_problem` on the bundled demo's code: the noise a 135M model wrote under the JSON schema (seen
on `pyagent improve --llm local:SmolLM2-135M-Instruct.Q4_1.gguf`) is refused, ordinary docstrings pass."""

from __future__ import annotations

import pytest

from pyagent.agents.docstrings import docstring_problem
from pyagent.improve.demo import sample_dir

REPORT = (sample_dir() / "inventory" / "report.py").read_text(encoding="utf-8")

GOOD = [
    ("summarize", "Count the inventory's items by kind, so reports can show totals."),
    ("describe", "One line of text for a report: each kind with its count."),
    ("describe", "Describes the inventory as `kind: count` pairs, or 'empty'."),
    ("<module>", "Summaries of an inventory for the reports."),
    ("summarize", "Tally items per classification."),  # "classify" shares its first four letters
]

BAD = [
    ("<module>", "Activatable py:</MODULE> - This file defines the base class and", "markup"),
    ("summarize", "Commercial, delivered to{", "markup"),
    ("describe", "INVACIANACIONES/INVACIANACIONES: ANACESIONES", "capitals"),
    ("describe", "Inventory.dump: /", "not a sentence"),
    ("summarize", "Communication", "not a sentence"),
    ("summarize", "Node-Phase 1-19, issuance/ The mandate of the Miner, on February", "names nothing"),
    ("describe", "Makes the macro that requirements like", "names nothing"),
    ("summarize", "tab\x07bell in a docstring", "control characters"),
]


@pytest.mark.parametrize(("name", "text"), GOOD)
def test_plain_docstrings_about_the_code_pass(name: str, text: str) -> None:
    assert docstring_problem(REPORT, name, text) is None


@pytest.mark.parametrize(("name", "text", "why"), BAD)
def test_noise_is_refused_with_what_to_do(name: str, text: str, why: str) -> None:
    problem = docstring_problem(REPORT, name, text)
    assert problem is not None and why in problem and name in problem


def test_a_method_is_found_and_judged_by_the_file_s_code() -> None:
    src = "class Cart:\n    def total(self, prices):\n        return sum(prices)\n"
    assert docstring_problem(src, "Cart.total", "Sum of the prices in the cart.") is None
    assert docstring_problem(src, "Cart.total", "Weather reports for tomorrow morning.") is not None
