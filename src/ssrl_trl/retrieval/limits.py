"""What the retrieval server accepts: request schemas, limits and their checks.

Every limit answers with a 4xx that says what to change, so a rollout that writes a 1 MB "query"
or asks for 4,000 queries x 100 documents gets a message instead of stalling the server for
everyone: the body size (413), the number and length of queries and topk (422), queries x topk
(413) and the size of the answer (413).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .base import Doc

__all__ = [
    "HTTPError",
    "R1SearcherRequest",
    "SearchR1Request",
    "ServerLimits",
    "Strict",
    "check_limits",
    "check_response_size",
    "parse",
    "read_body",
]


@dataclass(frozen=True)
class ServerLimits:
    """Request limits and batching knobs. Defaults fit a GRPO step that sends all queries at once."""

    max_queries: int = 4096  # queries in one request
    max_query_chars: int = 2048  # characters in one query
    max_topk: int = 100
    default_topk: int = 3  # Search-R1 and R1-Searcher both default to 3
    max_body_bytes: int = 8 * 1024 * 1024
    batch_wait_ms: float = 2.0  # how long the first request of a batch waits for company
    max_batch_queries: int = 1024  # queries per batched search call (and per chunk of a large request)
    max_pending_requests: int = 10_000  # beyond this, answer 503 instead of queueing
    max_results: int = 16_384  # queries x topk in one request; beyond it, 413
    max_response_bytes: int = 32 * 1024 * 1024  # size of one answer; beyond it, 413

    def __post_init__(self) -> None:
        bad = [f"{k}={v}" for k, v in vars(self).items() if v < (0 if k == "batch_wait_ms" else 1)]
        if bad:
            raise ValueError(f"ServerLimits needs values >= 1 (batch_wait_ms >= 0), got {', '.join(bad)}")
        if self.default_topk > self.max_topk:
            raise ValueError(f"default_topk={self.default_topk} exceeds max_topk={self.max_topk}")


class Strict(BaseModel):
    # strict: "3" is not an int and 1 is not a bool; forbid: a misspelt "top_k" is an error, not ignored
    model_config = ConfigDict(strict=True, extra="forbid")


class SearchR1Request(Strict):
    queries: list[str]
    topk: int | None = None
    return_scores: bool = False

    @property
    def requested_k(self) -> int | None:
        return self.topk


class R1SearcherRequest(Strict):
    queries: list[str]
    k: int | None = None

    @property
    def requested_k(self) -> int | None:
        return self.k


class HTTPError(Exception):
    def __init__(self, status: int, detail: str, errors: list[Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors = status, detail, errors


def check_response_size(results: list[list[Doc]], limits: ServerLimits) -> None:
    """413 before encoding an answer larger than ``max_response_bytes`` (an estimate from the
    passages' lengths: encoding it to find out would be the cost the limit avoids)."""
    size = sum(len(d.id) + 2 * len(d.contents) + 64 for docs in results for d in docs)
    if size > limits.max_response_bytes:
        raise HTTPError(
            413,
            f"the answer would be about {size / 2**20:.1f} MiB, over the limit of "
            f"{limits.max_response_bytes / 2**20:.1f} MiB; ask for fewer queries or a smaller topk per request",
        )


async def read_body(request: Any, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, f"request body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse(body: bytes, model: type[Strict]) -> Any:
    if not body.strip():
        raise HTTPError(400, "empty request body: send a JSON object")
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        errors = e.errors(include_url=False, include_input=False, include_context=False)
        if any(err["type"] == "json_invalid" for err in errors):
            raise HTTPError(400, f"request body is not valid JSON: {errors[0]['msg']}") from None
        summary = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in errors[:5])
        fields = ", ".join(model.model_fields)
        raise HTTPError(422, f"invalid request ({summary}); expected fields: {fields}", errors) from None


def check_limits(queries: list[str], k: int | None, limits: ServerLimits) -> int:
    if len(queries) > limits.max_queries:
        raise HTTPError(
            422, f"too many queries: {len(queries)} > limit {limits.max_queries}; split the request"
        )
    for i, q in enumerate(queries):
        if len(q) > limits.max_query_chars:
            raise HTTPError(
                422, f"queries[{i}] has {len(q)} characters; the limit is {limits.max_query_chars}"
            )
    k = limits.default_topk if k is None else k
    if not 1 <= k <= limits.max_topk:
        raise HTTPError(422, f"topk/k must be between 1 and {limits.max_topk}, got {k}")
    if len(queries) * k > limits.max_results:
        raise HTTPError(
            413,
            f"request asks for {len(queries)} queries x topk {k} = {len(queries) * k} results; the limit "
            f"is {limits.max_results} per request: split it or lower topk",
        )
    return k
