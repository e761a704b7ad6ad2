"""Scheduler building blocks: each paces, retries, trips or sizes one thing, knows nothing of
events or budgets, and is composed by `synthledger.engine.run.dispatcher`."""

from synthledger.engine.scheduler.breaker import CircuitBreaker
from synthledger.engine.scheduler.concurrency import AdaptiveConcurrency
from synthledger.engine.scheduler.limiter import RateLimiter
from synthledger.engine.scheduler.retry import RetryPolicy

__all__ = ["AdaptiveConcurrency", "CircuitBreaker", "RateLimiter", "RetryPolicy"]
