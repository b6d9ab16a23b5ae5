"""POS Edge Agent: the store-side service behind a till or a self-service kiosk."""

__version__ = "0.1.0"
