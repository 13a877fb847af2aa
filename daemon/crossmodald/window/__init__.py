"""window: pure event-time windows over one stream's frames and audio (rings, watermark, gaps)."""

from crossmodald.window.windower import Windower, WindowerStats

__all__ = ["Windower", "WindowerStats"]
