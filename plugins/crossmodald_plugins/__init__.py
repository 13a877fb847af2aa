"""Built-in crossmodald plugins."""
