"""``mritumor export``: a checkpoint's network as ONNX or TorchScript for deployment."""

from __future__ import annotations

import argparse

from mritumor.commands.common import add_command, flag

DESCRIPTION = """\
Hierarchical checkpoints: inputs images (B, N, C, S, S) float32 and mask (B, N) bool (True =
real slice), outputs type_logits (B, T), grade_logits (B, T, G) (-inf for grades never seen with
a type) and slice_weights (B, N); B and N are dynamic. Multi-task checkpoints: input images
(B, C, S, S), outputs class_logits (B, K) and/or mask_logits (B, 1, S, S) as the variant has
them; B is dynamic. Inputs are preprocessed slices in [0, 1]; logits are not temperature-scaled.
The exported model is run against PyTorch on a fresh batch (onnxruntime for ONNX, when
installed) and refused beyond 1e-4. OUTPUT.json beside the model records the label names,
preprocessing, temperature and bag size (TorchScript files also carry it as extra file
mritumor.json)."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands, "export", "export a checkpoint to ONNX or TorchScript", DESCRIPTION
    )
    flag(
        parser,
        "--checkpoint",
        required=True,
        help="best.pt of train-hierarchical or train-multitask",
    )
    flag(parser, "--format", choices=("onnx", "torchscript"), required=True, help="export format")
    flag(
        parser,
        "--output",
        default=None,
        help="file to write; when not given: beside the checkpoint, <name>.onnx or "
        "<name>.torchscript.pt",
    )
    flag(
        parser,
        "--no_verify",
        action="store_true",
        help="skip the comparison of the exported model with PyTorch",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from mritumor.export import export_model

    result = export_model(args.checkpoint, args.format, args.output, verify=not args.no_verify)
    print(f"exported {args.checkpoint} as {args.format}: {result['output']}")
    print(f"  metadata: {result['sidecar']}")
    if result.get("max_abs_difference") is not None:
        print(
            f"  matches PyTorch within {result['max_abs_difference']:.1e} "
            f"({result['verified_with']})"
        )
