"""peftlab: declarative experiments that compare parameter-efficient fine-tuning methods."""

__version__ = "0.1.0"
