"""PEFT methods, registered by name. Importing this package registers all of them."""

from peftlab.methods import adalora, adapter, bitfit, full, linear_probe, lora, peft_library, zero_shot  # noqa: F401
from peftlab.methods.base import METHODS, Method, MethodConfig

__all__ = ["METHODS", "Method", "MethodConfig"]
