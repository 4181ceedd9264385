"""Smoke: one boto3 round trip through the real proxy."""

import hashlib


def test_put_get_roundtrip(proxy, s3_backend):
    s3 = proxy.boto3_client("s3", region="us-east-1")
    s3.create_bucket(Bucket="smoke-bucket")
    body = b"hello through privatelink" * 1000
    s3.put_object(Bucket="smoke-bucket", Key="a b+c/~d", Body=body)
    got = s3.get_object(Bucket="smoke-bucket", Key="a b+c/~d")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()
    assert s3_backend.object_sha256("smoke-bucket", "a b+c/~d") == hashlib.sha256(body).hexdigest()
