"""End-to-end tests: the real app served on loopback, driven by gradio_client and by Chromium."""
