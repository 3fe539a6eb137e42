"""CNN Explorer: build the demo and launch it.

    python app.py                      # http://127.0.0.1:7860
    python app.py --host 0.0.0.0 --port 8080 --share --device cpu

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are respected when the flags are not given.
"""
from __future__ import annotations

import argparse
import os


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CNN Explorer: filters, feature maps and architecture of CNNs.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also create a public share link")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=os.environ.get("CNNVIZ_DEVICE", "auto"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device auto or cpu.")
    os.environ["CNNVIZ_DEVICE"] = args.device
    from cnnviz.ui import CSS, MAX_UPLOAD, build_demo

    build_demo().launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD, css=CSS
    )


if __name__ == "__main__":
    main()
