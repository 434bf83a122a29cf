"""appliance: build and install air-gapped LLM appliances."""

__version__ = "0.1.0"
