"""CNN Explorer: build the demo and launch it.

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080 --share --device cpu
    python app.py --mcp                # also an MCP server: http://127.0.0.1:7860/gradio_api/mcp/sse

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are respected when the flags are not given; CNNVIZ_MCP=1 (or
Gradio's own GRADIO_MCP_SERVER=True) turns on the MCP server, e.g. in a Space's settings.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys

def env_flag(name: str) -> bool:
    """An on/off environment variable: 1, true, yes, on (any case) mean on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CNN Explorer: filters, feature maps and architecture of CNNs.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also create a public share link")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=os.environ.get("CNNVIZ_DEVICE", "auto"))
    parser.add_argument(
        "--mcp", action="store_true", default=env_flag("CNNVIZ_MCP"),
        help="also serve the public endpoints as MCP tools at /gradio_api/mcp/sse (or set CNNVIZ_MCP=1)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("cnnviz").setLevel(logging.INFO)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device auto or cpu.")
    os.environ["CNNVIZ_DEVICE"] = args.device
    from cnnviz import server

    folder = server.private_temp_folder()  # before gradio is imported: it reads GRADIO_TEMP_DIR then
    running = []
    server.exit_cleanly(folder, lambda: running and running[0].close())  # from here on, even mid-start-up
    from cnnviz.ui import launch

    try:
        running.append(launch(args.host, args.port, args.share, mcp=True if args.mcp else None))
    except OSError as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"Cannot serve on {args.host}:{args.port} ({str(e).split('. ')[0]}); "
                         "is another server using that port? Choose one with --port.") from None
    server.wait_forever()


if __name__ == "__main__":
    main()
