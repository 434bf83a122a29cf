"""The S3 side of s3:// models: a boto3 client from the build machine's own AWS configuration,
S3's answers turned into appliance's errors, and an opener that reads an object from a byte
offset for the shared downloader (resume, retries, hashing: appliance/fetchers/http.py).

Endpoint, region and credentials come only from where the AWS SDKs read them: AWS_* variables
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL or
AWS_ENDPOINT_URL_S3), AWS_PROFILE and the shared config and credentials files. appliance never
writes any of them anywhere, and no message it prints quotes the SDK's own error text, which
names the endpoint URL (a MinIO URL may carry a user name): only S3's error code, the bucket
and the key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from appliance import __version__
from appliance.errors import FetchError
from appliance.fetchers.http import Opened, Opener, RetryPolicy, TransientError

# boto3 builds its client classes at run time; there is no type to name without stub packages.
S3Client = Any

# Where the endpoint came from, for messages that must not print it.
ENDPOINT_SETTINGS = "AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the profile's endpoint_url"
_DENIED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "403",
}
_MISSING = {"NoSuchKey", "NotFound", "404"}
_BUSY = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "503", "500"}


def make_client(policy: RetryPolicy, connections: int) -> S3Client:
    """A client for the profile and variables of this environment; several threads share it
    (boto3 clients are thread-safe, sessions are not)."""
    # Imported here: a build-machine dependency (the build extra), and slow to import.
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    try:
        session = boto3.session.Session()
        return session.client(
            "s3",
            config=Config(
                connect_timeout=policy.timeout,
                read_timeout=policy.timeout,
                retries={"max_attempts": policy.attempts, "mode": "standard"},
                max_pool_connections=max(10, connections),
                # appliance hashes every byte itself (sha256, the digest the manifest records):
                # no second checksum of the body by the SDK, and no request that makes the
                # server compute one (measured: benchmarks/s3_fetch.py).
                response_checksum_validation="when_required",
                request_checksum_calculation="when_required",
                user_agent_extra=f"appliance/{__version__}",
            ),
        )
    except BotoCoreError as exc:
        # e.g. ProfileNotFound: its text names the profile, which is no secret.
        raise FetchError(
            f"the S3 client cannot be set up from this environment ({type(exc).__name__})",
            hint="check AWS_PROFILE and the shared config file (AWS_CONFIG_FILE)",
        ) from None


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


@contextmanager
def s3_errors(model: str, where: str) -> Iterator[None]:
    """Turn what the SDK raises while reading ``where`` (s3://bucket/key) into an
    ApplianceError with a hint. ``from None``: the SDK's own text names the endpoint."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )
    from botocore.exceptions import (
        ConnectionError as SdkConnectionError,
    )

    try:
        yield
    except ClientError as exc:
        raise _client_error(model, where, error_code(exc)) from None
    except (NoCredentialsError, PartialCredentialsError):
        raise FetchError(
            f"model {model}: no S3 credentials in this environment to read {where}",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE to a profile "
            "that has them; appliance never stores them",
        ) from None
    except SdkConnectionError as exc:
        raise FetchError(
            f"model {model}: cannot reach the S3 endpoint to read {where} ({type(exc).__name__})",
            hint=f"check the endpoint ({ENDPOINT_SETTINGS}) and that this machine reaches it",
        ) from None
    except BotoCoreError as exc:
        raise FetchError(
            f"model {model}: the S3 client failed reading {where} ({type(exc).__name__})",
            hint=f"check the AWS settings of this environment ({ENDPOINT_SETTINGS}, AWS_REGION)",
        ) from None


def _client_error(model: str, where: str, code: str) -> FetchError:
    if code == "NoSuchBucket":
        return FetchError(
            f"model {model}: the S3 endpoint has no bucket for {where} (NoSuchBucket)",
            hint=f"check models[].source, and that the endpoint ({ENDPOINT_SETTINGS}) is the "
            "one that holds the bucket",
        )
    if code in _DENIED:
        return FetchError(
            f"model {model}: access denied to {where} ({code})",
            hint="the credentials of this environment (AWS_ACCESS_KEY_ID / AWS_PROFILE) need "
            "s3:ListBucket on the bucket and s3:GetObject on the prefix",
        )
    if code in _MISSING:
        return FetchError(
            f"model {model}: {where} is missing ({code})",
            hint="the object was removed or renamed in the bucket: restore it, or fix "
            "models[].source / the pins that name it",
        )
    return FetchError(
        f"model {model}: S3 refused to serve {where} ({code or 'no error code'})",
        hint=f"check the bucket and the AWS settings of this environment ({ENDPOINT_SETTINGS})",
    )


def object_opener(client: S3Client, model: str, bucket: str, key: str, etag: str) -> Opener:
    """Opens ``key`` at a byte offset (a ranged GET), only while it is still the object that
    was listed (If-Match on its ETag): a replaced object is not appended to an old prefix."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        IncompleteReadError,
        ResponseStreamingError,
    )
    from botocore.exceptions import (
        ConnectionError as SdkConnectionError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    where = f"s3://{bucket}/{key}"

    def open_at(offset: int) -> Opened:
        args: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": etag}
        if offset:
            args["Range"] = f"bytes={offset}-"
        try:
            response = client.get_object(**args)
        except ClientError as exc:
            code = error_code(exc)
            if code in {"InvalidRange", "416"} and offset:
                raise TransientError(
                    f"S3 InvalidRange resuming at byte {offset}; restarting", restart=True
                ) from None
            if code in {"PreconditionFailed", "412"}:
                raise FetchError(
                    f"model {model}: {where} changed while the build read it",
                    hint="something writes to the bucket now: build again once it is done",
                ) from None
            if code in _BUSY:
                raise TransientError(f"S3 {code}") from None
            raise _client_error(model, where, code) from None
        except (SdkConnectionError, BotoCoreError) as exc:
            raise TransientError(type(exc).__name__) from None
        body = response["Body"]
        status = response["ResponseMetadata"]["HTTPStatusCode"]
        return Opened(
            body=body,
            close=body.close,
            resumed=status == 206,
            length=int(response["ContentLength"]),
            read_errors=(IncompleteReadError, ResponseStreamingError, Urllib3Error, BotoCoreError),
        )

    return open_at
