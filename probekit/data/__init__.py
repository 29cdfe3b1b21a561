"""Data helpers: reading images of every kind; synthetic tasks and watermarks."""

from .images import check_images, to_pil

__all__ = ["check_images", "to_pil"]
