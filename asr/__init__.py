"""gemma3n-speech: speech recognition and translation with Gemma 3n's audio path, in plain PyTorch."""
from .loading import load_model

__all__ = ["load_model"]
