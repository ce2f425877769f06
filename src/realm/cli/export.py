"""`realm export onnx`: a checkpoint's query tower and reader as ONNX graphs (`realm.modeling.export`)."""

from __future__ import annotations

import argparse


def add_export_verbs(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export models for deployment (ONNX)").add_subparsers(
        dest="export_command", required=True
    )
    onnx = export.add_parser(
        "onnx", help="query tower and reader -> ONNX graphs, dynamic batch and length (pip install 'realm-lm[onnx]')"
    )
    onnx.add_argument("--model", required=True,
                      help="a RealmForOpenQA checkpoint directory (both graphs) or a RealmEmbedder one (query tower)")  # fmt: skip
    onnx.add_argument("--out", required=True, help="directory to write (query_embedder.onnx, reader.onnx, manifest.json)")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset of the graphs")
    onnx.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    onnx.set_defaults(run=_export_onnx)


def _export_onnx(args: argparse.Namespace) -> int:
    from realm.modeling.export import export_onnx

    written = export_onnx(args.model, args.out, opset=args.opset, overwrite=args.overwrite)
    for name in written.files:
        print(written.directory / name)
    return 0
