"""Infrastructure scripts: bucket set-up, IAM policies, a local S3 server for development."""
