"""i2vd: an image-to-video hot folder daemon."""

__version__ = "0.1.0"
