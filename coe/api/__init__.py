"""The REST front door: OpenAI-compatible endpoints over the pipeline."""
