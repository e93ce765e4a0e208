"""Request and response schemas of the Responses and Chat Completions APIs (the subset this server serves).

Requests forbid unknown fields so an unsupported option fails loudly with a 400 that names it, instead
of being silently ignored. Field names and shapes follow the official ``openai`` package's types so that
client parses every object we return.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

_STRICT = ConfigDict(extra="forbid", strict=True)
# Bounds on numbers so that an absurd value (10**30) is a 400 naming the field, not an overflow deeper in.
MAX_TOKENS = 2**31 - 1


def _check_text(value: Any, at: str = "") -> None:
    """Raise, naming where (``input[0].content``), if a string holds a lone surrogate (SQLite and the
    tokenizer cannot take one)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            where = f"'{at}': " if at else ""
            raise ValueError(f"{where}strings must be valid Unicode (a lone surrogate escape was sent)") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k, at)
            _check_text(v, f"{at}.{k}" if at else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_text(v, f"{at}[{i}]")


class _Request(BaseModel):
    """Request bodies: strict types, no unknown fields, and text the tokenizer and store can encode."""

    model_config = _STRICT

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        _check_text(data)
        return data

class _SamplingKnobs(BaseModel):
    """Sampling knobs beyond temperature/top_p that both APIs accept, validated alike: OpenAI's penalties
    and vLLM's extensions (benchmarks and local-model clients send those in ``extra_body``)."""

    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    top_k: int | None = Field(default=None, ge=-1)  # -1 or 0 = off
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=10.0)  # below 0.01 logits overflow
    ignore_eos: bool | None = None
    min_tokens: int | None = Field(default=None, ge=0)

    def sampling_extras(self) -> dict[str, float | int | bool]:
        """The knobs the client set, in the engine's ``SamplingParams`` names."""
        given = {"frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
                 "top_k": None if self.top_k is None else max(self.top_k, 0), "min_p": self.min_p,
                 "repetition_penalty": self.repetition_penalty, "ignore_eos": self.ignore_eos,
                 "min_tokens": self.min_tokens}
        return {k: v for k, v in given.items() if v is not None}


MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]


# ---------------------------------------------------------------- Responses API: request


class InputText(BaseModel):
    model_config = _STRICT
    type: Literal["input_text"]
    text: str


class OutputTextIn(BaseModel):
    """Assistant text sent back as input (a previous turn replayed by the client)."""

    model_config = _STRICT
    type: Literal["output_text"]
    text: str
    annotations: list[Any] = Field(default_factory=list, max_length=0)
    logprobs: list[Any] | None = None


ContentPart = Annotated[InputText | OutputTextIn, Field(discriminator="type")]


class MessageIn(BaseModel):
    model_config = _STRICT
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class TextFormat(BaseModel):
    model_config = _STRICT
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = _STRICT
    type: Literal["json_object"]


JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}


class JsonSchemaTextFormat(BaseModel):
    """``text.format`` of the Responses API: the schema sits beside its name."""

    model_config = _STRICT
    type: Literal["json_schema"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = _STRICT
    format: Annotated[TextFormat | JsonObjectFormat | JsonSchemaTextFormat, Field(discriminator="type")] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the output must match, or None for free text."""
        if isinstance(self.format, JsonSchemaTextFormat):
            return self.format.schema_
        return JSON_OBJECT_SCHEMA if isinstance(self.format, JsonObjectFormat) else None


LOGPROBS_INCLUDE = "message.output_text.logprobs"


class ResponseCreate(_SamplingKnobs, _Request):
    model: str
    input: str | Annotated[list[MessageIn], Field(min_length=1)]
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    max_output_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    metadata: Metadata | None = None
    truncation: Literal["auto", "disabled"] | None = None
    text: TextConfig | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[Literal["message.output_text.logprobs"]] | None = None


# ---------------------------------------------------------------- Responses API: objects


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class InputTextOut(BaseModel):
    type: Literal["input_text"] = "input_text"
    text: str


class InputMessageItem(BaseModel):
    """An input item as ``GET /v1/responses/{id}/input_items`` lists it."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    status: Literal["completed"] = "completed"
    content: list[InputTextOut | OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseErrorInfo(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed", "cancelled"]
    error: ResponseErrorInfo | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputMessage] = Field(default_factory=list)
    parallel_tool_calls: bool = False
    previous_response_id: str | None = None
    store: bool = True
    temperature: float
    top_p: float
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    top_logprobs: int | None = None
    tool_choice: Literal["none", "auto"] = "none"
    tools: list[Any] = Field(default_factory=list)
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: Usage | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    background: bool = False


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[InputMessageItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pyagent"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


# ---------------------------------------------------------------- Chat Completions


class ChatTextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ChatTextPart]
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class JsonSchemaSpec(BaseModel):
    model_config = _STRICT
    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    description: str | None = None
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    """``response_format`` of Chat Completions: the schema is wrapped in ``json_schema``."""

    model_config = _STRICT
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]
MAX_CHOICES = 16


class ChatCompletionCreate(_SamplingKnobs, _Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=2**64 - 1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # disaggregated serving (vLLM's name): what the KV connector does for this request; checked by it
    kv_transfer_params: dict[str, Any] | None = None

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the reply must match, or None for free text."""
        fmt = self.response_format
        if isinstance(fmt, JsonSchemaFormat):
            return fmt.json_schema.schema_ or JSON_OBJECT_SCHEMA
        return JSON_OBJECT_SCHEMA if isinstance(fmt, JsonObjectFormat) else None


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: dict[str, Any] | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class ChatCompletionObject(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: ChatUsage
