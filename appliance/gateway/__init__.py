"""The audited OpenAI-compatible gateway (``appliance-gateway``) and its audit log."""
