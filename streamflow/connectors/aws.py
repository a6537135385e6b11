"""AWS for StreamFlow: the ``s3`` connection, S3 clients, failure classification and SigV4.

An ``s3`` connection (or the same fields on an ``s3`` step or trigger) names an endpoint
(default: AWS; any S3-compatible store with ``endpoint_url``), a region and credentials.
Without ``access_key_id`` the AWS SDK's default chain is used (environment variables,
``~/.aws``, the instance or task role).

Clients are boto3's (thread-safe), one per distinct settings per App (``Resources``),
called from worker threads so the event loop never blocks. The SDK's own retries are
limited to ``sdk_attempts`` (default 2); after that the step's retry policy decides.

Failures are classified by ``s3_failure``: throttling (``SlowDown``, ``Throttling``),
``RequestTimeout``, 408/429/5xx and connection errors are retriable; every other answer
(``NoSuchKey``, ``NoSuchBucket``, ``AccessDenied``, 403, 404, a bad request) fails the
event for good. Messages go through the step's ``Masker`` (keys, session token), and the
SDK's loggers are kept at INFO or above: its DEBUG output holds request headers.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from streamflow.errors import PoisonMessageError, RetriableError, StreamFlowError
from streamflow.steps.base import Resources
from streamflow.topology.models import ConnectionConfig, Duration, Model, Secret, marked
from streamflow.topology.registry import connection_type
from streamflow.util.secrets import Masker

if TYPE_CHECKING:
    from collections.abc import Mapping

RETRIABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


class AwsSettings(Model):
    """Where an S3 API is and who calls it: shared by the s3 connection, step and trigger."""

    endpoint_url: str | None = Field(
        None, description="S3-compatible store, e.g. http://127.0.0.1:9000 (default: AWS)"
    )
    region: str | None = Field(None, description="e.g. eu-west-1 (default: us-east-1)")
    access_key_id: Annotated[str | None, Secret] = Field(
        None, description="default: the AWS SDK's chain"
    )
    secret_access_key: Annotated[str | None, Secret] = None
    session_token: Annotated[str | None, Secret] = Field(
        None, description="temporary credentials (STS)"
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="path: http://host/bucket/key (most S3-compatible stores)"
    )


@connection_type("s3", category="storage", since="0.1.0")
class S3Connection(ConnectionConfig, AwsSettings):
    """AWS S3 or an S3-compatible store: endpoint, region, credentials; for `s3` steps and triggers."""  # noqa: E501

    type: Literal["s3"]
    timeout: Duration | None = Field(None, description="connect and read timeout (default 60s)")


S3_FIELDS = ("endpoint_url", "region", "access_key_id", "secret_access_key", "session_token")


def s3_fields(conn: ConnectionConfig) -> dict[str, Any]:
    """What an s3 connection gives a step or trigger."""
    assert isinstance(conn, S3Connection)
    out: dict[str, Any] = {f: getattr(conn, f) for f in S3_FIELDS}
    if conn.addressing_style != "auto":
        out["addressing_style"] = conn.addressing_style
    out["timeout"] = conn.timeout
    return out


def s3_client(
    resources: Resources, settings: Mapping[str, Any], timeout: float, *, sdk_attempts: int = 2
) -> Any:
    """The App's boto3 S3 client for these (rendered) settings, created on first use."""
    ident = "\x00".join(str(settings.get(k) or "") for k in (*S3_FIELDS, "addressing_style"))
    key = "s3-client\x00" + hashlib.sha256(f"{ident}\x00{timeout}".encode()).hexdigest()

    def create() -> Any:
        import boto3
        from botocore.config import Config

        quiet_sdk_loggers("boto3", "botocore", "s3transfer")
        session = boto3.session.Session(
            aws_access_key_id=settings.get("access_key_id") or None,
            aws_secret_access_key=settings.get("secret_access_key") or None,
            aws_session_token=settings.get("session_token") or None,
        )
        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"mode": "standard", "total_max_attempts": sdk_attempts},
            s3={"addressing_style": settings.get("addressing_style") or "auto"},
            max_pool_connections=32,
        )
        return session.client(
            "s3",
            endpoint_url=settings.get("endpoint_url") or None,
            region_name=settings.get("region") or "us-east-1",
            config=config,
        )

    async def close(client: Any) -> None:
        client.close()  # its connection pool

    return resources.get(key, create, close)


def quiet_sdk_loggers(*names: str, level: int = logging.INFO) -> None:
    """An SDK's DEBUG log holds request headers (Authorization, X-Amz-Security-Token) and
    signing steps: keep its loggers at ``level`` or above, whatever the root level."""
    for name in names:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)


def s3_failure(exc: BaseException, what: str, masker: Masker) -> StreamFlowError:
    """The StreamFlow error for an exception of boto3/botocore raised while doing ``what``."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )

    if isinstance(exc, StreamFlowError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code") or "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = str(err.get("Message") or "")
        if code in ("404", "NoSuchKey", "NotFound"):
            message = message or "no such key"
        elif code == "403" and not message:
            message = "access denied"
        text = masker.mask(f"{what}: {code or status} {message}".rstrip())
        if code in RETRIABLE_CODES or status in (408, 429) or status >= 500:
            return RetriableError(text)
        return PoisonMessageError(text)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return PoisonMessageError(
            masker.mask(f"{what}: no usable AWS credentials ({exc}); set access_key_id and "
                        "secret_access_key, or the SDK's environment variables")
        )  # fmt: skip
    if isinstance(exc, ParamValidationError):
        return PoisonMessageError(masker.mask(f"{what}: {exc}"))
    if isinstance(exc, OSError):
        return RetriableError(masker.mask(f"{what}: {exc.__class__.__name__}: {exc}"))
    return RetriableError(masker.mask(f"{what}: {exc.__class__.__name__}: {exc}"))


def aws_masker(settings: Mapping[str, Any]) -> Masker:
    return Masker(str(settings[k]) for k in marked(AwsSettings, Secret) if settings.get(k))


# --------------------------------------------------------------------------- SigV4


def sigv4_headers(
    auth: Mapping[str, Any],
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes | None,
) -> dict[str, str]:
    """The headers of a request signed with AWS Signature Version 4 (botocore's signer):
    ``Authorization``, ``X-Amz-Date``, ``X-Amz-Content-Sha256`` (for s3) and
    ``X-Amz-Security-Token`` (with a session token), plus ``headers``. ``url`` carries the
    final query string (it is signed too)."""
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    quiet_sdk_loggers("botocore")
    creds = Credentials(
        str(auth["access_key_id"]),
        str(auth["secret_access_key"]),
        str(auth["session_token"]) if auth.get("session_token") else None,
    )
    service, region = str(auth["service"]), str(auth["region"])
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body or b"")
    signer = S3SigV4Auth if service == "s3" else SigV4Auth
    signer(creds, service, region).add_auth(request)
    return {str(k): str(v) for k, v in request.headers.items()}
