"""nexpy: a local-model-first, OpenAI-compatible agent runtime (`nex`)."""

__version__ = "0.1.0"
