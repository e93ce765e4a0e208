"""A chat template is code that comes with a downloaded model file and runs on every request. The sandbox
keeps it from Python's internals; these attacks check that it cannot take the server's time or memory
either, and that what real templates do still renders."""

from __future__ import annotations

import resource
import sys
import time
from typing import Any

import pytest

from pyagent.inference.chat_template import MAX_TEXT, RENDER_SECONDS, ChatTemplate, ChatTemplateError

MESSAGES = [{"role": "user", "content": "hi"}]

# (name, template, what the refusal says)
ATTACKS = [
    ("nested range loops", "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
     "ran for over"),
    ("nested loops over strings", "{% for a in 'x' * 100000 %}{% for b in 'y' * 100000 %}{% endfor %}{% endfor %}",
     "ran for over"),
    ("doubling with ~", "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}", "built a value of 4,194,304 items"),
    ("doubling with +", "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
     "{% endfor %}", "built a value of 4,194,304 items"),
    ("string repetition", "{{ 'x' * 10000000000 }}", "repeats 1 items 10,000,000,000 times"),
    ("list repetition", "{{ ([1] * 3000000) * 3000000 }}", "repeats 3,000,000 items 3,000,000 times"),
    ("center filter", "{{ 'x'|center(2000000000) }}", "asks for a width of 2,000,000,000"),
    ("center method", "{{ 'x'.center(2000000000) }}", "asks for a width of 2,000,000,000"),
    ("indent filter", "{{ 'a\nb'|indent(999999999) }}", "asks for a width of 999,999,999"),
    ("printf width", "{{ '%999999999s' % 'x' }}", "field width or precision of 8 digits"),
    ("printf width from the arguments", "{{ '%*s' % (999999999, 'x') }}", "asks for a width of 999,999,999"),
    ("format method width", "{{ '{:>999999999}'.format('x') }}", "field width or precision of 8 digits"),
    ("format method nested width", "{{ '{:>{}}'.format('x', 999999999) }}", "asks for a width of 999,999,999"),
    ("format filter width", "{{ '%999999999s'|format('x') }}", "field width or precision of 8 digits"),
    ("replace method", "{% set s = 'x' * 3000000 %}{{ s.replace('x', s) }}", "would build a value of 9,000,000,000,000"),
    ("replace filter", "{% set s = 'x' * 3000000 %}{{ s|replace('x', s) }}", "would build a value of 9,000,000,000,000"),
    ("join", "{% set s = 'x' * 3000000 %}{{ [s, s]|join }}", "built a value of 6,000,000 items"),
    ("huge power", "{{ 10 ** 100000000 }}", "raises to the power 100,000,000"),
    ("division by zero", "{{ 1 / 0 }}", "failed: ZeroDivisionError"),
    ("unbounded recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "failed: RecursionError"),
]


@pytest.mark.parametrize(("name", "source", "says"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_a_hostile_template_is_refused_quickly_and_without_the_memory(name: str, source: str, says: str) -> None:
    template = ChatTemplate(source, "evil.gguf (metadata key 'tokenizer.chat_template')", {})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(ChatTemplateError, match=r"chat template from evil\.gguf \(metadata key "
                                                r"'tokenizer\.chat_template'\) .*" + says.replace("(", r"\(")):
        template.render(MESSAGES)
    assert time.monotonic() - start < RENDER_SECONDS + 1.0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 8 * MAX_TEXT / 2**20 + 64, f"{name}: peak memory grew by {grown_mb:.0f} MB"


def test_what_real_templates_do_still_renders_and_a_debuggers_tracer_is_kept() -> None:
    source = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
              "{{ '%d' % 1733600000 }} {{ '{:>5}'.format('x') }} {{ 1733600000|string }} {{ '%s id 12345678' % 'a' }} "
              "{{ '{:>{}}'.format('y', 3) }} {{ 'x' ~ 1 }} {{ '%d'|format(1733600000) }} {{ 'ab'.replace('a', 'cc') }} "
              "{{ 'x'|center(5) }}|{{ ['a', 'b']|join(', ') }} {{ 2 ** 10 }} {{ strftime_now('%Y')|length }}")
    calls: list[str] = []

    def tracer(frame: Any, event: str, arg: Any) -> None:
        calls.append(event)

    sys.settrace(tracer)
    try:
        out = ChatTemplate(source, "t", {}).render(MESSAGES)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
    assert out == ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n1733600000     x 1733600000 a id 12345678 "
                   "  y x1 1733600000 ccb   x  |a, b 1024 4")
