"""Domain errors: one base class, specific subclasses, each with a stable problem type and HTTP status."""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://inferq.dev/problems/"


class InferqError(Exception):
    """Base of every error inferq reports to a client (rendered as RFC 9457 problem+json)."""

    type_slug: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"
    status: ClassVar[int] = 500

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    @property
    def type_uri(self) -> str:
        return PROBLEM_BASE + self.type_slug

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        """The problem+json body of this error."""
        body: dict[str, Any] = {
            "type": self.type_uri,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class ValidationFailed(InferqError):
    type_slug, title, status = "validation-error", "The request is not valid", 422


class BadRequest(InferqError):
    type_slug, title, status = "bad-request", "The request could not be read", 400


class NoImages(InferqError):
    type_slug, title, status = "no-images", "No images in the request", 400


class TooManyImages(InferqError):
    type_slug, title, status = "too-many-images", "Too many images in one job", 413


class PayloadTooLarge(InferqError):
    type_slug, title, status = "payload-too-large", "The request or an image is too large", 413


class InvalidImage(InferqError):
    type_slug, title, status = "invalid-image", "An image could not be decoded", 422


class UnsupportedImageFormat(InferqError):
    type_slug, title, status = "unsupported-image-format", "The image format is not supported", 415


class ImageTooLarge(InferqError):
    type_slug, title, status = "image-too-large", "The image has too many pixels", 413


class JobNotFound(InferqError):
    type_slug, title, status = "job-not-found", "No such job", 404


class ModelNotFound(InferqError):
    type_slug, title, status = "model-not-found", "No such model, version or alias", 404


class ModelNotReady(InferqError):
    type_slug, title, status = "model-not-ready", "The model cannot be loaded", 503


class JobNotCancelable(InferqError):
    type_slug, title, status = "job-not-cancelable", "The job has already finished", 409


class JobHasNoFiles(InferqError):
    """Output and error files belong to score jobs; asked of another kind of job (like model-not-optimizable)."""

    type_slug, title, status = "job-has-no-files", "Only score jobs have output files", 409


class NotFound(InferqError):
    type_slug, title, status = "not-found", "No such resource", 404


class MethodNotAllowed(InferqError):
    type_slug, title, status = "method-not-allowed", "Method not allowed", 405


class ServiceUnavailable(InferqError):
    type_slug, title, status = "service-unavailable", "A backing service is unavailable", 503


class DatasetNotFound(InferqError):
    type_slug, title, status = "dataset-not-found", "No such dataset", 404


class UnsupportedDatasetFormat(InferqError):
    type_slug, title, status = "unsupported-dataset-format", "The dataset format is not supported", 415


class UnsafeArchive(InferqError):
    type_slug, title, status = "unsafe-archive", "The archive has an unsafe entry", 422


class DatasetTooLarge(InferqError):
    type_slug, title, status = "dataset-too-large", "The dataset is past a size limit", 413


class InvalidDataset(InferqError):
    type_slug, title, status = "invalid-dataset", "The dataset could not be read", 422


class DatasetNotTrainable(InferqError):
    type_slug, title, status = "dataset-not-trainable", "The dataset cannot train a model", 422


class ModelNotOptimizable(InferqError):
    type_slug, title, status = "model-not-optimizable", "That version cannot be optimized", 409


# --- webhooks ---------------------------------------------------------------------------------------------


class WebhookUrlRefused(InferqError):
    type_slug, title, status = "webhook-url-refused", "The webhook URL is not allowed", 422


class WebhookEndpointNotFound(InferqError):
    type_slug, title, status = "webhook-endpoint-not-found", "No such webhook endpoint", 404


class WebhookDeliveryNotFound(InferqError):
    type_slug, title, status = "webhook-delivery-not-found", "No such webhook delivery", 404


class WebhookSecretAlreadyShown(InferqError):
    type_slug, title, status = "webhook-secret-already-shown", "The signing secret was already shown", 409


class UnsafeModel(InferqError):
    type_slug, title, status = "unsafe-model", "The model cannot be loaded safely", 422


class InvalidModel(InferqError):
    type_slug, title, status = "invalid-model", "The uploaded model is not usable", 422


class ExportFailed(InferqError):
    type_slug, title, status = "export-failed", "The export did not pass its checks", 500


# --- access: API keys, scopes, deletion ---------------------------------------------------------------------


class Unauthenticated(InferqError):
    type_slug, title, status = "unauthenticated", "A valid API key is required", 401


class InsufficientScope(InferqError):
    type_slug, title, status = "insufficient-scope", "The API key lacks a scope this request needs", 403


class PriorityNotAllowed(InferqError):
    """A classify job's priority above its tenant's cap (INFERQ_MAX_PRIORITY, INFERQ_TENANT_MAX_PRIORITY)."""

    type_slug, title, status = "priority-not-allowed", "This tenant may not use that priority", 403


class CsrfFailed(InferqError):
    type_slug, title, status = "csrf-failed", "The request lacks the session's CSRF token", 403


class ApiKeyNotFound(InferqError):
    type_slug, title, status = "api-key-not-found", "No such API key", 404


class JobNotFinished(InferqError):
    type_slug, title, status = "job-not-finished", "The job has not finished", 409


class DatasetInUse(InferqError):
    type_slug, title, status = "dataset-in-use", "A job still reads this dataset", 409


# --- abuse limits: queue caps, rate limits, idempotency keys ----------------------------------------------------


class RetryLater(InferqError):
    """A 429: the body carries `retry_after_s` and the answer a Retry-After header."""

    def __init__(self, detail: str, *, retry_after_s: int, **extra: Any) -> None:
        super().__init__(detail, retry_after_s=retry_after_s, **extra)
        self.headers = {"Retry-After": str(retry_after_s)}


class QueueFull(RetryLater):
    type_slug, title, status = "queue-full", "The tenant's queue is full", 429


class LaneFull(RetryLater):
    """A 503: the interactive lane's backlog is past INFERQ_INTERACTIVE_BACKLOG_MAX (shared/jobs/backpressure.py)."""

    type_slug, title, status = "lane-full", "The interactive lane is full", 503


class StorageUnavailable(RetryLater):
    """A 503: the blob store failed or could not be reached (api/problems.py maps its errors to this)."""

    type_slug, title, status = "storage-unavailable", "Storage is unavailable", 503


class RateLimited(RetryLater):
    type_slug, title, status = "rate-limited", "Too many requests", 429


class IdempotencyKeyInvalid(InferqError):
    type_slug, title, status = "idempotency-key-invalid", "The Idempotency-Key header is not valid", 400


class IdempotencyKeyReused(InferqError):
    type_slug, title, status = "idempotency-key-reused", "The Idempotency-Key was used for another request", 422


class IdempotencyKeyInUse(InferqError):
    type_slug, title, status = "idempotency-key-in-use", "A request with this Idempotency-Key is in progress", 409
