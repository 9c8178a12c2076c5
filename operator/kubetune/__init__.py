"""Kubetune: a Kubernetes operator that fine-tunes text embedding models.

`api` holds the resource types (the source of the CRDs and of docs/api.md), `decide` the
pure reconciliation decisions, `manifests` the Job a trial runs in, `clients` all I/O, and
`contract` what the operator and the trainer exchange.
"""
