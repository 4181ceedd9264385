"""s3proxy: reach S3 through an AWS PrivateLink interface endpoint while clients keep default S3 names."""

__version__ = "0.1.0"
