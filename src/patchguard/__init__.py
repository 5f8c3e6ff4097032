"""patchguard: kernel patch protection for Linux."""

__version__ = "0.1.0"
