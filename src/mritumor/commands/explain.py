"""``mritumor explain``: where the model looked (occlusion, Grad-CAM, slice importance)."""

from __future__ import annotations

from mritumor.commands.common import add_command, add_config_flag, add_data_flags, flag

DESCRIPTION = """\
For each patient, the predicted tumour type is explained: which slices mattered (the model's
attention weights, and the drop of the predicted type's probability when a slice is removed from
the bag) and where inside the top slices (pixel occlusion: the drop when a window is filled with
the slice's mean intensity, > 0 = the region supported the prediction; Grad-CAM of the last
convolutional block). Where tumour masks exist: share of positive attribution inside the mask and
pointing-game hit rate, per true class.
Writes attribution_summary.json, slices.csv and patients/<id>/ (overlay PNGs, maps.npz)."""


def register(subcommands) -> None:
    parser = add_command(
        subcommands, "explain", "attribution maps: which slices and regions mattered", DESCRIPTION
    )
    flag(parser, "--checkpoint", required=True, help="best.pt of a training run")
    add_data_flags(parser)
    flag(parser, "--outdir", required=True, help="folder for the maps, overlays, JSON and CSV")
    add_config_flag(parser)
    flag(
        parser,
        "--patients",
        nargs="+",
        default=None,
        help="patient ids to explain (default: the checkpoint's test patients in the data, else all)",
    )
    flag(
        parser,
        "--max_patients",
        type=int,
        default=8,
        help="explain at most this many patients, taken in turn from each tumour type (0: no limit)",
    )
    flag(
        parser,
        "--method",
        choices=("occlusion", "gradcam", "both"),
        default="both",
        help="pixel attribution method(s) for the top slices",
    )
    flag(
        parser,
        "--window",
        type=int,
        default=None,
        help="occlusion window side in pixels at the model's image size (default: size / 8)",
    )
    flag(
        parser,
        "--stride",
        type=int,
        default=None,
        help="occlusion window step in pixels (default: window / 2)",
    )
    flag(
        parser,
        "--baseline",
        choices=("mean", "zero"),
        default="mean",
        help="what fills the occluded window: the slice's mean intensity, or 0",
    )
    flag(
        parser,
        "--top_slices",
        type=int,
        default=3,
        help="pixel maps for this many most important slices per patient",
    )
    flag(
        parser,
        "--pointing_tolerance",
        type=int,
        default=0,
        help="pointing game: a hit within this many pixels of the mask counts",
    )
    flag(parser, "--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1…")
    parser.set_defaults(handler=run)


def run(args) -> None:
    from mritumor.explain.run import explain

    summary = explain(
        args.checkpoint,
        args.data_root,
        args.outdir,
        patients=args.patients,
        max_patients=args.max_patients,
        window=args.window,
        stride=args.stride,
        method=args.method,
        top_slices=args.top_slices,
        baseline=args.baseline,
        pointing_tolerance=args.pointing_tolerance,
        format=args.format,
        strict=args.strict,
        device=args.device,
        progress=not args.quiet,
    )
    print(f"explained {summary['n_patients']} patient(s); results in {args.outdir}")
    for method, scores in summary["attribution"].items():
        overall = scores["all"]
        if overall["n_with_mask"]:
            print(
                f"  {method}: share of attribution in mask {overall['share_in_mask_mean']:.3f} "
                f"(uniform map: {overall['mask_share_mean']:.3f}), pointing game "
                f"{overall['pointing_game_hits']}/{overall['n_with_mask']}"
            )
