"""A teacher that runs a local causal LM (SmolLM2 by default) through transformers.

It costs nothing, but the ledger still counts its queries and tokens exactly, so a run against
it is budgeted and audited like a run against an API. Concurrent `complete()` calls are
micro-batched into one `generate` (left padding), which is what makes a CPU model usable for a
run with many concurrent items.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Hashable

from pydantic import BaseModel, ConfigDict, Field

from synthledger.engine.api import ChatRequest, Completion, FailureKind, TeacherError, Usage

from .local_batcher import MicroBatcher


# Keys every `[teacher]` section may carry that mean nothing to an in-process model.
_ENDPOINT_KEYS = frozenset({"provider", "base_url", "api_key_env", "timeout_s"})


class LocalTeacherSettings(BaseModel):
    # Unknown keys are errors: a misspelt `batch_sise` must not silently fall back to the default.
    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2"
    max_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.7, ge=0)
    top_p: float | None = None
    device: str = "auto"  # "auto", "cpu", "cuda" or "cuda:N"
    batch_size: int = Field(default=16, ge=1)
    batch_wait_ms: float = Field(default=20.0, ge=0)


def settings_from(settings: Any) -> LocalTeacherSettings:
    """Accept our own settings, the engine's `[teacher]` section or a plain dict.

    The engine passes whatever section it parsed (fields plus plugin extras such as
    `batch_size`), so read what is there and default the rest."""
    if isinstance(settings, LocalTeacherSettings):
        return settings
    if settings is None:
        return LocalTeacherSettings()
    if isinstance(settings, dict):
        return LocalTeacherSettings.model_validate({k: v for k, v in settings.items() if k not in _ENDPOINT_KEYS})
    values: dict[str, Any] = dict(getattr(settings, "model_extra", None) or {})
    for name in LocalTeacherSettings.model_fields:
        value = getattr(settings, name, None)
        if value is not None:
            values[name] = value
    return LocalTeacherSettings.model_validate(values)


@dataclass
class BatchStats:
    """What the batcher did, for tests, logs and the benchmark."""

    batches: int = 0
    requests: int = 0
    rows: int = 0
    batch_sizes: list[int] = field(default_factory=list)


def _batch_key(request: ChatRequest) -> Hashable:
    # One generate() call has one sampling configuration; max_tokens may differ (rows are cut).
    return (request.temperature, request.top_p, request.stop)


class LocalTeacher:
    provider = "local"

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings_from(settings)
        _check_model_name(self.settings.model)
        self.stats = BatchStats()
        self._lock = threading.Lock()
        # The event loop tokenizes (budget bounds) while the worker thread tokenizes and decodes;
        # a fast tokenizer's Rust object must not be borrowed by both at once.
        self._tok_lock = threading.Lock()
        self._tokenizer: Any = None
        self._loaded: Any = None  # hf_models.LoadedModel
        self._eos: set[int] = set()
        self._batcher: MicroBatcher[ChatRequest, Completion] = MicroBatcher(
            self._run_batch,
            max_rows=self.settings.batch_size,
            wait_s=self.settings.batch_wait_ms / 1000.0,
            key=_batch_key,
            rows=lambda r: r.n,
        )

    # -- loading ---------------------------------------------------------------------------------

    def _ensure_tokenizer(self) -> Any:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    from synthledger.plugins.hf_models import load_tokenizer, resolve_model

                    self._tokenizer = load_tokenizer(self._tokenizer_source(resolve_model(self.settings.model)),
                                                     padding_side="left")
        return self._tokenizer

    @staticmethod
    def _tokenizer_source(resolved: str) -> str:
        from pathlib import Path

        from synthledger.plugins.hf_models import adapter_base, is_adapter

        if is_adapter(resolved) and not (Path(resolved) / "tokenizer_config.json").is_file():
            return adapter_base(Path(resolved))
        return resolved

    def _ensure_model(self) -> Any:
        if self._loaded is None:
            with self._lock:
                if self._loaded is None:
                    from synthledger.plugins.hf_models import eos_token_ids, load_causal_lm

                    loaded = load_causal_lm(self.settings.model, device=self.settings.device, padding_side="left")
                    self._eos = eos_token_ids(loaded)
                    self._tokenizer = loaded.tokenizer
                    self._loaded = loaded
        return self._loaded

    # -- Teacher protocol ------------------------------------------------------------------------

    def _prompt_ids(self, request: ChatRequest) -> list[int]:
        tokenizer = self._ensure_tokenizer()
        with self._tok_lock:
            text = tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)
            return tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        """Exact: the prompt is tokenized here exactly as `generate` will see it."""
        return len(self._prompt_ids(request))

    async def complete(self, request: ChatRequest) -> Completion:
        return await self._batcher.submit(request)

    async def aclose(self) -> None:
        with self._lock:
            loaded, self._loaded = self._loaded, None
        if loaded is not None and loaded.device.startswith("cuda"):
            import torch

            del loaded
            torch.cuda.empty_cache()

    # -- one batch, in a worker thread -----------------------------------------------------------

    def _run_batch(self, requests: list[ChatRequest]) -> list[Completion | BaseException]:
        try:
            loaded = self._ensure_model()
        except ValueError as exc:  # unknown model, no chat template: retrying cannot help
            return [TeacherError(FailureKind.BAD_REQUEST, f"local model {self.settings.model!r}: {exc}")] * len(requests)
        except Exception as exc:  # noqa: BLE001
            return [TeacherError(FailureKind.SERVER_ERROR, f"loading local model failed: {exc!r}")] * len(requests)
        results: list[Completion | BaseException | None] = [None] * len(requests)
        prompts: list[tuple[int, list[int]]] = []
        limit = getattr(loaded.model.config, "max_position_embeddings", None)
        for i, request in enumerate(requests):
            ids = self._prompt_ids(request)
            if limit is not None and len(ids) + request.max_tokens > limit:
                results[i] = TeacherError(
                    FailureKind.BAD_REQUEST,
                    f"prompt ({len(ids)} tokens) + max_tokens ({request.max_tokens}) exceeds the local "
                    f"model's context of {limit} tokens",
                )
            else:
                prompts.append((i, ids))
        if prompts:
            try:
                completions = self._generate(loaded, [requests[i] for i, _ in prompts], [ids for _, ids in prompts])
            except Exception as exc:  # noqa: BLE001 - one failed generate fails its batch, nothing billed
                error = TeacherError(FailureKind.SERVER_ERROR, f"local generation failed: {exc!r}", maybe_billed=False)
                completions = [error] * len(prompts)
            for (i, _), completion in zip(prompts, completions):
                results[i] = completion
        return results  # type: ignore[return-value]

    def _generate(self, loaded: Any, requests: list[ChatRequest], prompt_ids: list[list[int]]) -> list[Completion]:
        import torch

        from synthledger.plugins.hf_models import left_pad

        tokenizer, model = loaded.tokenizer, loaded.model
        rows = [ids for request, ids in zip(requests, prompt_ids) for _ in range(request.n)]
        batch = left_pad(rows, tokenizer.pad_token_id, loaded.device)
        first = requests[0]  # every request in a batch shares the sampling settings (see _batch_key)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(r.max_tokens for r in requests),
            "eos_token_id": sorted(self._eos),
            "pad_token_id": tokenizer.pad_token_id,
        }
        if first.temperature > 0:
            kwargs.update(do_sample=True, temperature=first.temperature, top_k=0,
                          top_p=first.top_p if first.top_p is not None else 1.0)
        else:
            kwargs.update(do_sample=False)
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=tokenizer)
        with torch.inference_mode():
            output = model.generate(**batch, **kwargs)
        generated = output[:, batch["input_ids"].shape[1]:].tolist()

        self.stats.batches += 1
        self.stats.requests += len(requests)
        self.stats.rows += len(rows)
        self.stats.batch_sizes.append(len(requests))

        completions: list[Completion] = []
        row = 0
        for request, ids in zip(requests, prompt_ids):
            texts: list[str] = []
            reasons: list[str | None] = []
            output_tokens = 0
            for _ in range(request.n):
                text, count, reason = self._finish_row(generated[row][: request.max_tokens], request)
                texts.append(text)
                reasons.append(reason)
                output_tokens += count
                row += 1
            completions.append(Completion(
                texts=texts,
                usage=Usage(input_tokens=len(ids), output_tokens=output_tokens),
                finish_reasons=reasons,
                raw_model=self.settings.model,
            ))
        return completions

    def _decode(self, tokens: list[int]) -> str:
        with self._tok_lock:
            return self._tokenizer.decode(tokens, skip_special_tokens=True)

    def _finish_row(self, tokens: list[int], request: ChatRequest) -> tuple[str, int, str]:
        """The reply text, how many tokens were really generated for it, and why it ended.

        Generation of a finished row goes on as padding until the whole batch is done; those
        tokens are not the row's. An EOS token counts (the model produced it), nothing after."""
        reason = "length"
        count = kept = len(tokens)
        for i, token in enumerate(tokens):
            if token in self._eos:
                count, kept, reason = i + 1, i, "stop"
                break
        text = self._decode(tokens[:kept])
        if request.stop:
            hits = [(text.find(s), s) for s in request.stop if s and s in text]
            if hits:
                at = min(hits)[0]
                count = self._tokens_until(tokens[:count], text[: at + len(min(hits)[1])])
                text, reason = text[:at], "stop"
        return text, count, reason

    def _tokens_until(self, tokens: list[int], prefix: str) -> int:
        """The fewest leading tokens whose text contains `prefix` (where a stop string ended the row)."""
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._decode(tokens[:mid]).startswith(prefix):
                hi = mid
            else:
                lo = mid + 1
        return hi


def _check_model_name(name: str) -> None:
    """An unknown model name is a configuration error before the run starts, not a failed query
    per item. The alias is trusted without converting its weights (that waits for the first query)."""
    from synthledger.plugins.hf_models import SMOLLM2_ALIASES, UnknownModel, resolve_model

    if str(name).strip().lower() in SMOLLM2_ALIASES:
        return
    try:
        resolve_model(name)
    except UnknownModel as exc:
        reason = str(exc).removeprefix(f"model {name!r}: ")
        raise UnknownModel(f"the local provider has no model {name!r} ({reason}); "
                           "set model to a model it can load") from None


def create(settings: Any = None) -> LocalTeacher:
    """The factory the teachers plugin registers under the name "local"."""
    return LocalTeacher(settings)
