"""LlamaBoard's lf-multilr parts that need no LLaMA-Factory: the fields, their labels and values, the per-module
view (``patches/webui.py`` puts them into LlamaBoard)."""
