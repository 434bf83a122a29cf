"""The GPU host: facts about a host's NVIDIA GPUs and the checks verify makes on them."""
