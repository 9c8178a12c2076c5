"""devcluster: a real Kubernetes control plane, S3 and MLflow on one machine, no Docker."""
