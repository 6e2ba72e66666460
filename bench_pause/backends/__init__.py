"""One module per way of reaching a vLLM engine: in-process (offline) and HTTP."""
