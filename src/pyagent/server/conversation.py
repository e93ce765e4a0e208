"""Input items <-> chat messages: how a request and its stored predecessors become one conversation."""

from __future__ import annotations

from typing import Any

from pyagent.server.models import MessageIn
from pyagent.server.run import new_id
from pyagent.server.store import StoredResponse

# Chat templates know system/user/assistant; "developer" is the Responses API's name for system.
_TEMPLATE_ROLE = {"developer": "system"}


def input_items(input_: str | list[MessageIn]) -> list[dict[str, Any]]:
    """The request's input as stored items (what ``input_items.list`` returns), each with an id."""
    if isinstance(input_, str):
        return [_item("user", [{"type": "input_text", "text": input_}])]
    items = []
    for message in input_:
        if isinstance(message.content, str):
            kind = "output_text" if message.role == "assistant" else "input_text"
            parts: list[dict[str, Any]] = [_part(kind, message.content)]
        else:
            parts = [_part(p.type, p.text) for p in message.content]
        items.append(_item(message.role, parts, message.id))
    return items


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "output_text":
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "input_text", "text": text}


def _item(role: str, content: list[dict[str, Any]], item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("msg"), "type": "message", "role": role, "status": "completed", "content": content}


def item_message(item: dict[str, Any]) -> dict[str, str]:
    role = str(item["role"])
    text = "".join(str(p.get("text", "")) for p in item.get("content", ()))
    return {"role": _TEMPLATE_ROLE.get(role, role), "content": text}


def history_messages(chain: list[StoredResponse], inputs: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    """Messages of earlier turns: each stored response's input items, then its output messages."""
    out: list[dict[str, str]] = []
    for stored in chain:
        out.extend(item_message(it) for it in inputs[stored.id])
        for item in stored.body.get("output", ()):
            if item.get("type") == "message":
                out.append(item_message(item))
    return out
