"""Fisher-Rao norm metric plugin for sharpkit."""

__version__ = "0.1.0"
