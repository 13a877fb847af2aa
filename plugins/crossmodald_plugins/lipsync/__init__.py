"""The project's own lip-sync model (see weights/MODEL_CARD.md)."""
