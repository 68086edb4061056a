"""Typed errors of the agent layer.

Vendor exceptions are translated into these at the adapter edge, so the
session decides what to do from ``retryable`` alone. Messages never carry
secrets or transcript content.
"""


class AgentError(Exception):
    """Base class of every error the agent layer raises."""


class ConfigError(AgentError):
    """An agent configuration (YAML or settings) that cannot be used."""


class ProviderError(AgentError):
    """A provider (STT, LLM, TTS, VAD) failed.

    ``retryable`` is True for transient failures (time-outs, overload, a
    dropped connection) where the same request may succeed later.
    """

    def __init__(self, provider: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.retryable = retryable


class ModelLoadError(ProviderError):
    """A local model file is missing or cannot be loaded."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=False)


class SessionClosedError(AgentError):
    """Input was given to a session that is already closed."""


class ProviderTimeoutError(ProviderError):
    """A provider did not answer within its time budget (always retryable)."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=True)


class RateLimitedError(ProviderError):
    """A provider refused the request for now; ``retry_after_s`` when it said how long."""

    def __init__(self, provider: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(provider, message, retryable=True)
        self.retry_after_s = retry_after_s


class ProviderAuthError(ProviderError):
    """A provider refused our credentials (HTTP 401/403): never retryable.

    The key is invalid or lacks permission, so asking again cannot help.
    Adapters raise it instead of a plain ``ProviderError`` so a fallback chain
    opens that provider's circuit at once, for the long auth cool-down.
    """

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=False)


class InputTooLongError(ProviderError):
    """The request does not fit the model's context even with the history dropped: the
    latest message alone is too long (never retryable; the API answers 413)."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(provider, message, retryable=False)
