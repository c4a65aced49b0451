"""The neural networks: FramePack transformer, HunyuanVideo VAE, and the three encoders."""
