"""ffmpeg: which binary, the one-pass graph from frames, and the recipes."""
