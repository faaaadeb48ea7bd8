"""coe: a Composition-of-Experts service behind one OpenAI-compatible endpoint."""

__version__ = "0.1.0"
