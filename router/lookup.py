"""Where a request's prompt is cached, by engine truth: tokenize it, look its blocks up.

An I/O edge: tokenization runs in a worker thread (`tokenizers` releases the GIL in its batch
call), so the event loop keeps serving while a long prompt is encoded. docs/design.md,
Engine truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from router import metrics
from router.core.block_index import BlockIndex
from router.prompt_tokens import PromptTokenizer

log = logging.getLogger("router.lookup")


class PromptLookup:
    def __init__(self, prompts: PromptTokenizer, blocks: BlockIndex) -> None:
        self.prompts = prompts
        self.blocks = blocks

    async def cached(self, path: str, body: Any, tokens: float) -> dict[str, float]:
        """For each replica with events, how much of the prompt it holds, in the units of
        `tokens` (the request's estimate); empty when the prompt cannot be tokenized."""
        started = time.perf_counter()
        ids: list[int] | None = None
        if isinstance(body, Mapping):
            try:
                ids = await self.prompts.request_tokens_async(path, body)
            except Exception as error:  # a template that rejects this body: route without truth
                log.debug("cannot tokenize a %s request: %s", path, error)
        if not ids:
            metrics.KV_LOOKUPS.labels("untokenized").inc()
            return {}
        held = self.blocks.cached_tokens(ids)
        scale = tokens / len(ids)
        metrics.KV_LOOKUP_SECONDS.observe(time.perf_counter() - started)
        metrics.KV_LOOKUPS.labels("found" if any(held.values()) else "nowhere").inc()
        return {url: count * scale for url, count in held.items()}
