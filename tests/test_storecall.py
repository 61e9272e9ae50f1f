"""What an object store's failure means: the one classification every store call uses."""

from __future__ import annotations

import pytest

from exporter.storecall import NotThere, StorageError, call, classify, reason


class _ClientError(Exception):
    """Shaped like botocore's ClientError: the parsed answer in ``response``."""

    def __init__(self, status: int, code: str, message: str = "m") -> None:
        super().__init__(f"An error occurred ({code})")
        self.response = {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }


class _HttpError(Exception):
    """Shaped like gcsfs' HttpError and azure-core's HttpResponseError: a status attribute."""

    def __init__(self, status: int) -> None:
        super().__init__(f"status {status}")
        self.code = status
        self.status_code = status


class HTTPClientError(Exception):  # botocore's names; classify matches them by name
    pass


class ConnectionClosedError(HTTPClientError):
    pass


def _wrapped(cause: BaseException, outer: BaseException) -> BaseException:
    """As s3fs raises it: its own OSError, the store's answer as the cause."""
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (FileNotFoundError("x"), "missing"),
        (FileExistsError("x"), "exists"),
        (_wrapped(_ClientError(412, "PreconditionFailed"), OSError(5, "x")), "exists"),
        (_wrapped(_ClientError(409, "ConditionalRequestConflict"), OSError(5, "x")), "retry"),
        (_wrapped(_ClientError(503, "SlowDown"), OSError(16, "x")), "retry"),
        (_wrapped(_ClientError(500, "InternalError"), OSError(121, "x")), "retry"),
        (_wrapped(_ClientError(400, "RequestTimeout"), OSError(5, "x")), "retry"),
        (_wrapped(_ClientError(403, "AccessDenied"), PermissionError("x")), "fatal"),
        (_wrapped(_ClientError(400, "InvalidArgument"), OSError(22, "x")), "fatal"),
        (_HttpError(409), "retry"),
        (_HttpError(412), "exists"),
        (_HttpError(404), "fatal"),  # only a FileNotFoundError or a NoSuchKey says "missing"
        (ConnectionResetError(104, "reset"), "retry"),
        (TimeoutError(), "retry"),
        (ConnectionClosedError("closed"), "retry"),
        (ValueError("bug"), "fatal"),
    ],
)
def test_each_failure_has_one_meaning(exc: BaseException, kind: str) -> None:
    """409, 408, 429, 5xx, resets and timeouts are retried; 412 is an existing object; a
    denial or a bad request is final."""
    assert classify(exc) == kind


def test_the_reason_is_the_stores_answer_without_the_endpoints_path() -> None:
    """``HTTP 503 SlowDown: message``; a URL in a message keeps only its host."""
    exc = _wrapped(_ClientError(503, "SlowDown", "Please reduce"), OSError(16, "Please reduce"))
    assert reason(exc) == "HTTP 503 SlowDown: Please reduce"
    closed = ConnectionClosedError(
        'Connection closed: "http://127.0.0.1:9000/bucket/key?X-Amz-Signature=s"'
    )
    assert reason(closed) == 'ConnectionClosedError: Connection closed: "http://127.0.0.1:9000"'


def test_a_missing_object_is_not_retried() -> None:
    """A 404 is an answer, not a failure to get one: one attempt, NotThere."""
    attempts: list[int] = []

    def missing() -> None:
        attempts.append(1)
        raise FileNotFoundError("x")

    with pytest.raises(NotThere, match=r"^cannot read s3://b/x: FileNotFoundError: x$"):
        call(missing, what="read s3://b/x", sleep=lambda _: None)
    assert len(attempts) == 1


def test_a_transient_failure_then_success_returns_the_result() -> None:
    """A reset, then the answer: the result, after one backoff."""
    answers: list[BaseException | str] = [ConnectionResetError(104, "reset"), "data"]
    sleeps: list[float] = []

    def flaky() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert call(flaky, what="read s3://b/x", sleep=sleeps.append) == "data"
    assert len(sleeps) == 1


def test_a_denial_is_final() -> None:
    """403 once: StorageError at once, its kind ``fatal``."""
    denied = _wrapped(_ClientError(403, "AccessDenied", "Access Denied"), PermissionError("x"))

    def deny() -> None:
        raise denied

    with pytest.raises(StorageError, match=r"HTTP 403 AccessDenied: Access Denied$") as info:
        call(deny, what="write s3://b/x", sleep=lambda _: pytest.fail("no retry"))
    assert info.value.kind == "fatal"
