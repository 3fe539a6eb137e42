"""The ``cnnviz`` command: ``cnnviz serve`` starts the app (``python app.py`` is the same entry and flags).

    cnnviz serve                       # http://127.0.0.1:7860
    cnnviz serve --host 0.0.0.0 --port 8080 --share --device cpu
    cnnviz serve --mcp                 # also an MCP server: http://127.0.0.1:7860/gradio_api/mcp/
    cnnviz atlas --model resnet18 --data ~/photos --layers layer3,layer4   # dataset examples of a folder
    python -m cnnviz serve ...         # the same, without the console script

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are respected when the flags are not given; CNNVIZ_MCP=1 (or
Gradio's own GRADIO_MCP_SERVER=True) turns on the MCP server, e.g. in a Space's settings.

This module imports no gradio: the UI is imported inside the serve command (the library stays free of it).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence

from .vocab import env_flag

PROG = "cnnviz"
DESCRIPTION = "CNN Explorer: filters, feature maps and architecture of CNNs."



def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve flags (``cnnviz serve`` and ``python app.py`` take exactly these)."""
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also create a public share link")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=os.environ.get("CNNVIZ_DEVICE", "auto"))
    parser.add_argument(
        "--mcp", action="store_true", default=env_flag("CNNVIZ_MCP"),
        help="also serve the public endpoints as MCP tools at /gradio_api/mcp/ (Streamable HTTP; or set CNNVIZ_MCP=1)",
    )
    parser.add_argument(
        "--model", metavar="PACKAGE.MODULE:FACTORY",
        help="add your own model: the factory (imported once, at start-up) returns an nn.Module or "
             "cnnviz.from_module(...); it is listed first and opened by default",
    )
    parser.add_argument(
        "--checkpoint", metavar="FILE",
        help="with --model: weights to load into it (.safetensors or a PyTorch state dict, read safely)",
    )
    parser.add_argument("--labels", metavar="FILE", help="with --model: its class names, one per line")
    parser.add_argument(
        "--data", metavar="NAME=DIR", action="append", default=[],
        help="an image collection the page offers by name for dataset examples (repeatable; or set CNNVIZ_COLLECTIONS); "
             "no request can name any other folder",
    )


def serve_parser(prog: str = f"{PROG} serve") -> argparse.ArgumentParser:
    """The parser of the serve command on its own (``python app.py`` uses it with ``prog="app.py"``)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_serve_arguments(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """``cnnviz <command>``: one sub-command per job (``serve``, ``atlas``)."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser("serve", help="start the app (as `python app.py` does)", description=DESCRIPTION)
    add_serve_arguments(serve)
    serve.set_defaults(run=serve_command)
    atlas = commands.add_parser(
        "atlas", help="dataset examples: what each channel responds to across a folder of images",
        description="Run (or resume, or look up) the dataset examples of a model's layers over a folder of images "
                    "(recursively; one sub-folder per class gives labels). Results go to an SQLite file in "
                    "--data-dir (CNNVIZ_DATA_DIR, else ~/.cache/cnnviz); the app's Feature maps and Collection "
                    "views read them. Ctrl-C stops at the next batch; run it again to resume.")
    add_atlas_arguments(atlas)
    atlas.set_defaults(run=atlas_command)
    return parser


def add_atlas_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a registry name (resnet50, timm/convnext_tiny.fb_in1k)")
    parser.add_argument("--data", required=True, metavar="DIR", help="the folder of images")
    parser.add_argument("--layers", default="", help="comma-separated layer names (default: the output of each stage)")
    parser.add_argument("--weights", default="pretrained", choices=["pretrained", "random"])
    parser.add_argument("--k", type=int, default=9, help="examples kept per channel, each order (default 9)")
    parser.add_argument("--engine", default="local", choices=["local", "ray"])
    parser.add_argument("--ray-address", default=None, help="a Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default: sized to the layers)")
    parser.add_argument("--workers", type=int, default=None, help="decode workers of the local engine (default: cores - 1)")
    parser.add_argument("--data-dir", default=None, help="where the database lives (default: CNNVIZ_DATA_DIR or ~/.cache/cnnviz)")


def parse_serve_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The serve flags parsed (``python app.py [flags]``)."""
    return serve_parser("app.py").parse_args(argv)


def serve_model(target: str, checkpoint: str | None = None, labels: str | None = None):
    """``--model PACKAGE.MODULE:FACTORY [--checkpoint FILE] [--labels FILE]``: import the operator's module,
    call its factory (an ``nn.Module``, or a handle from :func:`cnnviz.from_module` with its own input size,
    transform and labels), load the checkpoint with the safe reader, and give it to this process as
    ``"module/<name>"``. Only here, at start-up, is code imported by name: no request can name any.

    Raises:
        SystemExit: a sentence saying what is wrong with the flags, the factory, the file or the labels.
    """
    import importlib

    import torch

    from cnnviz import checkpoint as checkpoint_mod
    from cnnviz import loading
    from cnnviz.errors import CnnvizError

    where, _, attribute = target.partition(":")
    if not where or not attribute:
        raise SystemExit(f"--model {target}: give it as package.module:factory (a function returning the model).")
    try:
        factory = importlib.import_module(where)
    except ImportError as e:
        raise SystemExit(f"--model {target}: cannot import {where} ({e}).") from None
    for part in attribute.split("."):
        if not hasattr(factory, part):
            raise SystemExit(f"--model {target}: {where} has no {attribute}.")
        factory = getattr(factory, part)
    if not callable(factory):
        raise SystemExit(f"--model {target}: {attribute} is not callable; name a function that returns the model.")
    made = factory()
    if isinstance(made, loading.LoadedModel):
        options = {"transform": made.transform, "input_size": made.input_size, "labels": made.categories,
                   "name": made.spec.display}
        module = made.model
    elif isinstance(made, torch.nn.Module):
        options, module = {}, made
    else:
        raise SystemExit(f"--model {target}: the factory returned {type(made).__name__}, not an nn.Module "
                         "(or cnnviz.from_module(...)).")
    try:
        if checkpoint:
            notes = loading.load_module_weights(module, checkpoint)
            logging.getLogger("cnnviz").info("--checkpoint %s loaded%s", checkpoint,
                                             f" ({'; '.join(notes)})" if notes else "")
        if labels:
            options["labels"] = checkpoint_mod.read_labels(labels)
        return loading.from_module(module, **options)
    except CnnvizError as e:
        raise SystemExit(f"--model {target}: {e}") from None


def serve_command(args: argparse.Namespace) -> None:
    """Start the server as the flags say and serve until SIGINT/SIGTERM (then tidy up and exit)."""
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("cnnviz").setLevel(logging.INFO)
    _check_port(args.host, args.port)  # before ~10 s of imports: a taken port is said at once
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here; use --device auto or cpu.")
    if (args.checkpoint or args.labels) and not args.model:
        raise SystemExit("--checkpoint and --labels go with --model (your own module); for a registry model's "
                         "checkpoint use the Compare tab's upload.")
    os.environ["CNNVIZ_DEVICE"] = args.device
    if args.data:
        from cnnviz.dataset import catalog
        from cnnviz.errors import CnnvizError

        try:
            named = [catalog.parse(spec) for spec in args.data]
        except CnnvizError as e:
            raise SystemExit(f"--data: {e}") from None
        os.environ[catalog.ENV] = os.pathsep.join(f"{name}={path}" for name, path in named)
    if args.model:
        sys.path.insert(0, os.getcwd())  # the operator's package, as `python -m` finds it
        serve_model(args.model, args.checkpoint, args.labels)
    from cnnviz import server

    folder = server.private_temp_folder()  # before gradio is imported: it reads GRADIO_TEMP_DIR then
    running = []
    server.exit_cleanly(folder, lambda: running and running[0].close())  # from here on, even mid-start-up
    from cnnviz.ui import launch

    try:
        running.append(launch(args.host, args.port, args.share, mcp=True if args.mcp else None))
    except OSError as e:  # taken since _check_port looked
        shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(_cannot_serve(args.host, args.port, e)) from None
    server.wait_forever()


def _cannot_serve(host: str, port: int, error: OSError) -> str:
    return (f"Cannot serve on {host}:{port} ({str(error).split('. ')[0]}); is another server using that port? "
            "Choose one with --port.")


def _check_port(host: str, port: int) -> None:
    """Exit with :func:`_cannot_serve`'s sentence when ``host:port`` is already taken (bound as uvicorn binds it,
    with ``SO_REUSEADDR``). A host that does not resolve is left to the launch, which says why."""
    import errno
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, UnicodeError):
        return
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise SystemExit(_cannot_serve(host, port, e)) from None


def atlas_command(args: argparse.Namespace) -> None:
    """Run the atlas with a progress bar; SIGINT/SIGTERM stop it at the next batch (its progress is kept)."""
    import signal
    import threading

    from tqdm import tqdm

    from cnnviz.errors import CnnvizError
    from cnnviz.explore import atlas

    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=0, unit="img", desc="atlas", dynamic_ncols=True)

    def progress(p) -> None:
        bar.total = p.total
        bar.n = p.done
        bar.refresh()

    try:
        report = atlas(args.model, args.data, layers=args.layers or None, weights=args.weights, k=args.k, engine=args.engine,
                       data_dir=args.data_dir, batch_size=args.batch_size, progress=progress, stop=stopping.is_set,
                       ray_address=args.ray_address, workers=args.workers)
    except CnnvizError as e:
        raise SystemExit(f"cnnviz atlas: {e}") from None
    finally:
        bar.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(report.describe())
    for skipped in report.skipped[:20]:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    if len(report.skipped) > 20:
        print(f"  … and {len(report.skipped) - 20} more")
    if not report.complete:
        raise SystemExit(130)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``cnnviz`` console script (and ``python -m cnnviz``); ``argv=None`` reads the process's own command line."""
    args = build_parser().parse_args(argv)
    args.run(args)


def serve_main(argv: Sequence[str] | None = None) -> None:
    """``python app.py [flags]``: the serve command, with app.py's own name in ``--help``."""
    serve_command(parse_serve_args(argv))


def launch(
    module=None,
    *,
    transform=None,
    input_size: Sequence[int] = (3, 224, 224),
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    labels: Sequence[str] | None = None,
    name: str | None = None,
    share: bool = False,
    host: str = "127.0.0.1",
    port: int | None = None,
    mcp: bool | None = None,
    **launch_kwargs,
):
    """Open the whole app on ``module`` (inline in a notebook, else at the printed address); returns the
    running ``gradio.Blocks`` (``.close()`` stops it).

    ``module``: an ``nn.Module`` (given to :func:`cnnviz.from_module` with ``transform``, ``input_size``,
    ``mean``, ``std``, ``labels``, ``name``), a handle ``from_module`` returned, or None for the app as
    ``cnnviz serve`` starts it. The module is first in the model picker and selected when a page opens.
    ``share=True`` also makes a public link; ``port=None`` takes the first free port from 7860;
    ``launch_kwargs`` go to Gradio's ``Blocks.launch`` (``inline=``, ``height=``, ...).
    """
    from cnnviz import loading

    if module is not None and not isinstance(module, loading.LoadedModel):
        loading.from_module(module, transform=transform, input_size=input_size, mean=mean, std=std, labels=labels,
                            name=name)
    from cnnviz.ui import launch as launch_ui

    return launch_ui(host, port, share, mcp=mcp, **launch_kwargs)
