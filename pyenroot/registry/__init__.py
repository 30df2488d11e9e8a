"""Talking to OCI registries: URI grammar, authentication, manifests, blob transfer."""
