"""crossmodald: a real-time cross-modal (audio-visual) analysis daemon."""

__version__ = "0.1.0"
