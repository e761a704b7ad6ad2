"""Scheduler building blocks: each paces, retries, trips or sizes one thing, knows nothing of
events or budgets, and is composed by `synthledger.engine.run.dispatcher`."""

from .breaker import CircuitBreaker
from .concurrency import AdaptiveConcurrency
from .limiter import RateLimiter
from .retry import RetryPolicy

__all__ = ["AdaptiveConcurrency", "CircuitBreaker", "RateLimiter", "RetryPolicy"]
