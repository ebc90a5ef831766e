"""gemma3n-speech: speech recognition and translation with Gemma 3n's audio path, in plain PyTorch.

    import asr
    model = asr.load_model("path/to/gemma-3n-E2B-it", device="cpu", dtype="bfloat16")
    print(model.transcribe("speech.wav", language="en").text)
"""

__all__ = ["DecodeOptions", "load_model"]


def __getattr__(name):
    # Imported on first use so that `import asr.checkpoint` (or the CLI's --help) stays light.
    if name == "load_model":
        from .loading import load_model

        return load_model
    if name == "DecodeOptions":
        from .model import DecodeOptions

        return DecodeOptions
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
