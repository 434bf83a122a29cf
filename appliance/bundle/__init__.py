"""The bundle: a content-addressed store, a signed manifest, and the tools that read them."""
