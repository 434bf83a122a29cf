"""Fetchers: one module per source kind, each turning spec entries into blobs."""
