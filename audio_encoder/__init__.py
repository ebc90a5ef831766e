"""Gemma 3n audio path, bottom layer: audio I/O (audio), log-mel (features), AudioConfig (config),
the audio tower (encoder, with subsampling and conformer), AudioEmbedder (embedder), exact incremental
encoding (stream) and voice activity detection (vad). Import the submodules directly."""
