"""Reference central identity & card service the agent syncs with."""
