"""CNN Explorer: ``python app.py [flags]`` is ``cnnviz serve [flags]`` (the Hugging Face Space runs this file).

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080 --share --device cpu
    python app.py --mcp                # also an MCP server: http://127.0.0.1:7860/gradio_api/mcp/

The flags, the environment variables they read and the start-up are in :mod:`cnnviz.cli`.
"""
from __future__ import annotations

from cnnviz.cli import serve_main

if __name__ == "__main__":
    serve_main()
