"""Will these models fit on these GPUs, and with which vLLM settings: answered from the model
files themselves, with no network and no GPU.

- ``safetensors``, ``gguf``: read a checkpoint's tensor list from its header, never its weights.
- ``architecture``: what one token costs in the KV cache, from ``config.json`` or GGUF metadata.
- ``model``: a model's facts (weights, architecture) from a directory, a GGUF file, an Ollama
  layout or a bundle's blobs.
- ``gpus``: GPU types as data with their sources, ``--gpu``/``--gpu-memory`` and nvidia-smi.
- ``vllm``: how vLLM spends GPU memory, per tensor-parallel size, and the flags to use.

Pure Python: no torch, no network, nothing but the standard library and ``appliance.errors``.
"""
