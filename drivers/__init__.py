"""Scanner, camera and printer drivers. They emit scans and print bytes; they know nothing of members or money."""
