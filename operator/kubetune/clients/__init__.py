"""The only code that talks to the outside: Kubernetes, S3 and MLflow clients."""
