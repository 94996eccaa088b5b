"""Datasets: registry, download, manifests, shards, transforms, loaders."""
