"""Reference central identity & card service the agent syncs with."""

__version__ = "0.1.0"
