"""Request bodies of the built-in agent's routes: colo's ``/infer``, OpenAI's, and text-embeddings-inference's.

Every body is a pydantic model whose JSON Schema is the route's OpenAPI request schema, so what the schema
allows is what the agent accepts: texts are bounded (:data:`MAX_TEXT_CHARS`, :data:`MAX_ITEMS`), must be
valid Unicode (a lone surrogate such as ``"\\ud800"`` is refused here, not by the tokenizer or the JSON
encoder later), ids are non-negative, and "exactly one of" rules are written into the schema as ``oneOf``.
Types are JSON's (``"true"`` is not a boolean, ``"3"`` not an integer, ``3.0`` is one, as JSON Schema says):
what the schema refuses, the agent refuses. Limits that depend on the model (its ``batch_size``, ``max_seq_len``, vocabulary) are checked by
the runtime and answered 4xx in the route's own error shape; the OpenAPI document carries them once the
models are loaded (:mod:`colo.modelserver.openapi_doc`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

# Hard bounds on any body, before the per-model worst case is checked (keeps a request's size sane).
MAX_ITEMS = 4096
MAX_TEXT_CHARS = 1_000_000
MAX_IDS_PER_ROW = 1_048_576
MAX_NEW_TOKENS = 1_048_576
MAX_MESSAGES = 1024


def _valid_unicode(text: str) -> str:
    """``text`` when it encodes as UTF-8; a lone surrogate (JSON's ``"\\ud800"``) raises ValueError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"the text is not valid Unicode: a lone surrogate at character {exc.start}") from None
    return text


def _whole_number(value: Any) -> Any:
    """JSON Schema's integers: ``3`` and ``3.0``, never ``"3"`` nor ``true`` (pydantic's lax mode takes a
    numeric string; its strict mode refuses ``3.0``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_whole_number)]
# Bounds go before the validator, so pydantic writes them as JSON Schema's minimum/maximum.
Count = Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS), BeforeValidator(_whole_number)]
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1), BeforeValidator(_whole_number)]
JsonBool = Annotated[bool, Strict()]


def _json_false(value: Any) -> Any:
    if value is not False:
        raise ValueError("streaming is not supported: leave stream out or false")
    return value


NoStream = Annotated[Literal[False], BeforeValidator(_json_false)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS), AfterValidator(_valid_unicode)]
Texts = Annotated[list[Text], Field(min_length=1, max_length=MAX_ITEMS)]
Row = Annotated[list[TokenId], Field(min_length=1, max_length=MAX_IDS_PER_ROW)]
Rows = Annotated[list[Row], Field(min_length=1, max_length=MAX_ITEMS)]
ModelId = Annotated[str, Field(max_length=512, description="Model id; default: the agent's first model.")]


def _one_of(*names: str) -> dict[str, Any]:
    return {"oneOf": [{"required": [name]} for name in names]}


class InferBody(BaseModel):
    """``POST /infer`` body: one batch for one model, as ``texts`` or as ``input_ids`` (exactly one)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_of("texts", "input_ids"))

    model: ModelId | SkipJsonSchema[None] = None
    texts: Texts | SkipJsonSchema[None] = None
    input_ids: Rows | SkipJsonSchema[None] = None
    max_new_tokens: (
        Annotated[Count, Field(description="Generators only: tokens to generate.")]
        | SkipJsonSchema[None]
    ) = None

    @field_validator("model", "texts", "input_ids", "max_new_tokens", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        # The schema has no null for these fields (absent means "not given"): an explicit null is refused.
        if value is None:
            raise ValueError("null is not allowed; leave the field out instead")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> InferBody:
        if (self.texts is None) == (self.input_ids is None):
            raise ValueError("give exactly one of 'texts' or 'input_ids'")
        return self


# --- OpenAI -----------------------------------------------------------------------------------------------


class EmbeddingsBody(BaseModel):
    """OpenAI ``POST /v1/embeddings``: ``input`` is a string, a list of strings, a token array or a list of
    token arrays; ``encoding_format`` ``float`` (JSON numbers) or ``base64`` (little-endian float32 bytes)."""

    model_config = ConfigDict(extra="ignore")  # clients send fields colo has no use for (user)

    model: ModelId
    input: Text | Texts | Row | Rows
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: SkipJsonSchema[JsonInt | None] = None
    user: SkipJsonSchema[str | None] = None


class CompletionsBody(BaseModel):
    """OpenAI ``POST /v1/completions`` (non-streaming, greedy): ``prompt`` a string or a list of strings."""

    model_config = ConfigDict(extra="ignore")

    model: ModelId
    prompt: Text | Texts
    max_tokens: Count | None = None
    stream: NoStream = False


class ChatMessage(BaseModel):
    """One message of a chat; only text content."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Text


class ChatBody(BaseModel):
    """OpenAI ``POST /v1/chat/completions`` (non-streaming, greedy)."""

    model_config = ConfigDict(extra="ignore")

    model: ModelId
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    stream: NoStream = False


# --- Hugging Face text-embeddings-inference -----------------------------------------------------------------


class EmbedBody(BaseModel):
    """TEI ``POST /embed``: ``inputs`` a string or a list of strings; ``normalize`` (default true) scales
    each embedding to unit length, as TEI does."""

    model_config = ConfigDict(extra="ignore")

    inputs: Text | Texts
    normalize: JsonBool = True


class PredictBody(BaseModel):
    """TEI ``POST /predict``: ``inputs`` a string or a list of strings; ``raw_scores`` gives logits instead of
    probabilities."""

    model_config = ConfigDict(extra="ignore")

    inputs: Text | Texts
    raw_scores: JsonBool = False
