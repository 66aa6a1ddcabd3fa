"""The OpenAI Chat Completions (and legacy Completions) wire format, as pydantic v2 models.

Requests ignore unknown fields (clients send vendor extras we do not implement); responses are
built by the app and serialized with `model_dump(exclude_none=...)` where OpenAI omits fields.
Every bound a request can break is checked here, so it is a 400 naming the field before any
work is done: numbers in OpenAI's ranges (a seed is an int64), list lengths, and text that is
valid Unicode (JSON's `"\\ud800"` escape parses to a lone surrogate that no tokenizer, database
or JSON encoder accepts).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

INT64 = 2**63
MAX_MESSAGES = 2048  # OpenAI's own limit on a conversation's length
MAX_PROMPTS = 16  # prompts in one /v1/completions call: each is a queued request
MAX_STOP = 4


def invalid_unicode(value: Any) -> str | None:
    """Why `value` (a string, or strings nested in lists and dicts) is not valid Unicode, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"is not valid Unicode: a lone surrogate at character {e.start}"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(k, str) and (why := invalid_unicode(k)):
            return why
        if why := invalid_unicode(v):
            return f"[{k!r}] {why}" if isinstance(k, str) else f"[{k}] {why}"
    return None


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        # Every field of every request model; nested models check their own fields.
        if why := invalid_unicode(value):
            raise ValueError(why)
        return value


# --- request -------------------------------------------------------------------------------
class ImageURL(_Request):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ImagePart(_Request):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class FunctionCall(_Request):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's format, in requests and responses)


class ToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = ""  # null beside an assistant's tool_calls (OpenAI's way)
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, sent back in the next turn
    tool_call_id: str | None = None  # a tool result: the call it answers (the template does not need it)

    @model_validator(mode="after")
    def _null_is_empty(self) -> ChatMessage:
        # Lenient where it costs nothing: null content without tool_calls is an empty message.
        if self.content is None and not self.tool_calls:
            self.content = ""
        return self


class FunctionDefinition(_Request):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for function names
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; absent: no arguments
    strict: bool | None = None


class Tool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


class JsonSchemaFormat(_Request):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")  # `schema` would shadow BaseModel's
    strict: bool | None = None


class StreamOptions(_Request):
    include_usage: bool = False


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a json_schema object")
        return self


class _Sampling(_Request):
    """Fields the two completion endpoints share."""

    model: str
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(default=None, ge=-INT64, le=INT64 - 1)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # token id -> bias; bounded in number because it is applied at every step of every choice
    logit_bias: Annotated[dict[int, Annotated[float, Field(ge=-100, le=100)]], Field(
        max_length=1024, json_schema_extra={"propertyNames": {"pattern": "^[0-9]{1,9}$"}})] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None  # OpenAI allows 128 functions
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True


class CompletionRequest(_Sampling):
    """The legacy /v1/completions: raw text in, no chat template. `echo` + `logprobs` with
    `max_tokens: 0` scores a text (how eval harnesses get log-likelihoods from an endpoint)."""

    prompt: str | Annotated[list[str], Field(max_length=MAX_PROMPTS)] = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None


# --- responses -----------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None = None


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage


class ChunkFunction(BaseModel):
    name: str | None = None  # in a call's first chunk
    arguments: str | None = None  # the arguments' text, a piece per chunk


class ChunkToolCall(BaseModel):
    index: int
    id: str | None = None  # in a call's first chunk, with its type and name
    type: Literal["function"] | None = None
    function: ChunkFunction


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None  # only on the final usage chunk (stream_options.include_usage)


class TextLogprobs(BaseModel):
    """The legacy completions' logprobs: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: TextLogprobs | None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[TextChoice]
    usage: Usage | None = None


class Pricing(BaseModel):
    prompt: float  # USD per 1k prompt tokens
    completion: float  # USD per 1k completion tokens


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "opengpt4"
    # Extras (OpenAI's list has only the four above; clients ignore unknown fields):
    snapshot: str | None = None  # what an alias resolves to
    context_length: int | None = None
    accepts_images: bool | None = None
    pricing: Pricing | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code)).model_dump()
