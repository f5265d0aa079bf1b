"""The ``revwatch`` command line.

Each sub-command is a thin wrapper: it parses arguments, installs logging, and calls the
module that does the work. Heavy imports happen inside the commands so that ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from processing.errors import RevwatchError

__all__ = ["main", "build_parser"]

log = logging.getLogger(__name__)

_EPILOG = """\
examples:
  revwatch demo                                   everything at once on generated data
  revwatch run "D:/ASV/cathode-01" --detector "SEM Image" --planned-depth-um 30 --exit-when-representative
  revwatch monitor tcp://127.0.0.1:5556           live dashboard of a running agent
  revwatch replay stack.tif --to incoming/ --interval-s 2
  revwatch metrics cathode-01.revwatch.ome.zarr   Table 1 + REV report of a volume
  revwatch compare a.ome.zarr b.ome.zarr --names 10min 15h --figures figs/
  revwatch calibrate "D:/ASV/cathode-01" --out calib/   phase classes of the first slices, before the run
"""


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _logging_options(*, in_subcommand: bool) -> argparse.ArgumentParser:
    """``-v`` and ``--log-level``, accepted before and after the sub-command.

    In the sub-command's parser the defaults are suppressed, so that an option given before the
    sub-command is not reset by the sub-parser.
    """
    parent = argparse.ArgumentParser(add_help=False)
    default = {"default": argparse.SUPPRESS} if in_subcommand else {}
    parent.add_argument("-v", "--verbose", action="count", help="more log output (-v: debug for `run`, info for the "
                        "others; -vv: debug)", **({"default": 0} if not in_subcommand else default))
    parent.add_argument("--log-level", type=str.upper, choices=_LOG_LEVELS, help="log level (wins over -v); default "
                        "INFO for `run` (what the agent does), WARNING for the other commands", **default)
    return parent


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file (see deploy/revwatch.example.toml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one configuration key, e.g. --set rev.tolerance=0.03 (repeatable)",
    )


def _run_overrides(args: argparse.Namespace) -> list[str]:
    """Translate the dedicated `run` flags into configuration overrides (the command line wins)."""
    out = []
    if args.folder is not None:
        out.append(f"acquisition.folder={_toml_str(args.folder)}")
    if args.volume is not None:
        out.append(f"volume.path={_toml_str(args.volume)}")
    if args.detector is not None:
        out.append(f"acquisition.detector={_toml_str(args.detector)}")
    if args.polling:
        out.append("acquisition.polling=true")
    if args.endpoint is not None:
        out.append(f"publish.endpoint={_toml_str(args.endpoint)}")
    if args.scheduler is not None:
        out.append(f"analysis.scheduler={_toml_str(args.scheduler)}")
    if args.exit_when_representative:
        out.append("rev.exit_when_representative=true")
    if args.planned_depth_um is not None:
        out.append(f"acquisition.planned_depth_um={args.planned_depth_um!r}")
    if args.planned_slices is not None:
        out.append(f"acquisition.planned_slices={args.planned_slices:d}")
    if args.insecure:
        out.append("publish.insecure=true")
    if args.keys_dir is not None:
        out.append(f"publish.keys_dir={_toml_str(args.keys_dir)}")
    return out + args.overrides


def _toml_str(value) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_run(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.pipeline import Agent

    config = load_config(args.config, _run_overrides(args))
    if config.acquisition.folder is None:
        raise RevwatchError("no acquisition folder: give it as `revwatch run FOLDER` or acquisition.folder in the config")
    summary = Agent(config).run(idle_exit_s=args.idle_exit_s)
    print(summary.describe())
    return 0


def cmd_monitor(args: argparse.Namespace) -> int:
    from agent.monitor import run_monitor

    return run_monitor(
        args.endpoint,
        once=args.once,
        timeout_s=args.timeout_s,
        keys_dir=args.keys_dir,
        snapshot_endpoint=args.snapshot_endpoint,
    ) or 0


def cmd_replay(args: argparse.Namespace) -> int:
    from agent.replay import replay

    def progress(count, path):
        print(f"slice {count}: {path}", flush=True)

    n = replay(
        args.source,
        args.to,
        interval_s=args.interval_s,
        pixel_size_um=None if args.pixel_size_nm is None else args.pixel_size_nm / 1000.0,
        limit=args.limit,
        on_slice=None if args.quiet else progress,
    )
    print(f"replayed {n} slices into {args.to}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(
        slices=args.slices,
        size_px=args.size_px,
        interval_s=args.interval_s,
        workdir=args.workdir,
        seed=args.seed,
        endpoint=args.endpoint,
    )


def cmd_metrics(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.report import metrics_report

    # [analysis] network phases and [composition] of a configuration; the options win
    cfg = load_config(args.config) if args.config else None
    network = {}
    if cfg is not None:
        a = cfg.analysis
        network = dict(tortuosity=a.tortuosity_phases, thickness=a.thickness_phases, connected=a.connected_phases,
                       interconnected=a.interconnected_phases, tortuosity_factor=a.tortuosity_factor_phases or None,
                       coverage_by=a.coverage_by)
    for key in ("tortuosity", "thickness", "connected", "interconnected", "tortuosity_factor"):
        given = getattr(args, f"{key}_phase")
        if given:
            network[key] = [] if given == ["none"] else given
    if args.coverage_by:
        network["coverage_by"] = args.coverage_by
    from agent.pictures import pictures_folder

    return metrics_report(
        args.volume,
        json_output=args.json,
        spacing_um=args.spacing_um,
        phase_map=args.phase,
        transport_axis=args.transport_axis,
        plot=args.plot,
        rev=not args.no_rev,
        tolerance=args.tolerance,
        network_phases=network,
        composition=None if cfg is None else cfg.composition.as_dict(),
        scheduler=args.scheduler or (cfg.analysis.scheduler if cfg else None),
        chunk_voxels=args.chunk_voxels or (cfg.analysis.chunk_voxels if cfg else None),
        halo_slices=cfg.analysis.halo_slices if cfg else None,
        tortuosity_max_voxels=args.tortuosity_max_voxels,
        pictures=None if args.no_pictures else args.pictures or pictures_folder(args.volume),
    )


def cmd_compare(args: argparse.Namespace) -> int:
    from agent.compare import compare_report

    return compare_report(
        args.volumes,
        names=args.names,
        spacing_um=args.spacing_um,
        phase_map=args.phase,
        transport_axis=args.transport_axis,
        k=args.k,
        n_samples=args.samples,
        min_edge_um=args.min_edge_um,
        reference=args.reference,
        json_output=args.json,
        csv_path=args.csv,
        figures=args.figures,
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from agent.bench import main as bench_main

    return bench_main(quick=args.quick, slices=args.slices) or 0


def cmd_keys(args: argparse.Namespace) -> int:
    from agent.keys import create_keys

    paths = create_keys(args.folder, clients=tuple(args.client or ["client"]), overwrite=args.force)
    for p in paths:
        print(p)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.config import load_config
    from agent.doctor import run_doctor

    return run_doctor(load_config(args.config, args.overrides), expected_slices=args.expected_slices)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from agent.calibrate import calibrate_folder
    from agent.config import load_config

    config = load_config(args.config, args.overrides)
    report = calibrate_folder(args.folder, config, slices=args.slices, out=args.out)
    print(report.describe())
    return 0 if report.check.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        parents=[_logging_options(in_subcommand=False)],
        prog="revwatch",
        description="Align, segment and measure FIB-SEM slices as they arrive; say when the volume is representative.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    logging_options = [_logging_options(in_subcommand=True)]

    p = sub.add_parser("run", parents=logging_options, help="watch an acquisition folder and process slices as they arrive")
    p.add_argument("folder", nargs="?", type=Path, help="folder the microscope writes into (or acquisition.folder)")
    p.add_argument("--volume", type=Path, help="OME-Zarr volume to write or resume (default: beside the folder)")
    p.add_argument("--detector", help="the detector folder whose slices make the volume, when FOLDER holds several "
                   "(e.g. 'SEM Image'; acquisition.detector)")
    p.add_argument("--polling", action="store_true", help="poll the folder (network shares without file events)")
    p.add_argument("--endpoint", help="ZeroMQ PUB endpoint (default tcp://127.0.0.1:5556)")
    p.add_argument("--scheduler", help="run the metrics on a dask.distributed cluster at tcp://HOST:PORT")
    p.add_argument("--exit-when-representative", action="store_true", help="publish `stop` and exit 0 once representative")
    horizon = p.add_mutually_exclusive_group()
    horizon.add_argument("--planned-depth-um", type=float, help="depth the acquisition is planned to reach: the REV horizon")
    horizon.add_argument("--planned-slices", type=int, help="slices planned: the REV horizon (instead of --planned-depth-um)")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback endpoint without CURVE keys")
    p.add_argument("--keys-dir", type=Path, help="CURVE keys made by `revwatch keys` (needed off loopback)")
    p.add_argument("--idle-exit-s", type=float, default=None, help="exit after this long without a new slice")
    p.add_argument("--log-file", type=Path, help="also write the log here (a service or scheduled task has no console)")
    _add_config_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("monitor", parents=logging_options, help="live terminal dashboard of a running agent")
    p.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5556", help="the agent's PUB endpoint")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--timeout-s", type=float, default=10.0, help="with --once: how long to wait for the agent")
    p.add_argument("--keys-dir", type=Path, help="CURVE keys when the agent is not on loopback")
    p.add_argument("--snapshot-endpoint", help="the agent's snapshot socket (default: the PUB port + 1)")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("replay", parents=logging_options, help="copy an existing stack into a folder at a cadence (simulates an acquisition)")
    p.add_argument("source", type=Path, help="a folder of slice TIFFs or a multi-page TIFF")
    p.add_argument("--to", type=Path, required=True, help="destination folder (the one the agent watches)")
    p.add_argument("--interval-s", type=float, default=1.0, help="seconds between slices (default 1)")
    p.add_argument("--pixel-size-nm", type=float, help="pixel size of a multi-page TIFF source whose metadata has none "
                   "(required then; never invented)")
    p.add_argument("--limit", type=int, help="replay at most this many slices")
    p.add_argument("--quiet", action="store_true", help="do not print each slice")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", parents=logging_options, help="generate an acquisition, replay it, run the agent and show it live")
    p.add_argument("--slices", type=int, default=300, help="slices to generate (default 300)")
    p.add_argument("--size-px", type=int, default=256, help="slice edge in pixels (default 256)")
    p.add_argument("--interval-s", type=float, default=0.02, help="seconds between slices (default 0.02)")
    p.add_argument("--workdir", type=Path, help="keep the acquisition and volume here (default: a new temp folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated microstructure")
    p.add_argument("--endpoint", help="also publish on this ZeroMQ endpoint (default: a free loopback port)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("metrics", parents=logging_options, help="Table 1 metrics and REV report of a finished volume or a label TIFF")
    p.add_argument("volume", type=Path, help="a revwatch OME-Zarr volume, or a multi-page TIFF of labels")
    p.add_argument("--json", action="store_true", help="print the `metrics` document as JSON")
    p.add_argument("--spacing-um", type=float, nargs=3, metavar=("DZ", "DY", "DX"), help="voxel size of a label TIFF")
    p.add_argument(
        "--phase",
        action="append",
        default=[],
        metavar="LABEL=NAME",
        help="label-to-phase mapping of a label TIFF (required for one), e.g. --phase 0=pore --phase 1=active "
        "--phase 2=electrolyte; NAME:ROLE gives a role to another name (--phase 2=cbd:electrolyte)",
    )
    p.add_argument("--transport-axis", choices=("z", "y", "x"), default="y", help="transport direction (default y)")
    p.add_argument("--plot", type=Path, help="write the REV curves as a PNG here")
    p.add_argument("--no-rev", action="store_true", help="skip the REV report")
    p.add_argument("--tolerance", type=float, default=0.05, help="REV tolerance (default 0.05)")
    p.add_argument("--config", type=Path, help="read [analysis] network phases and [composition] from this file")
    for key, default in (("tortuosity", "the electrolyte"), ("thickness", "electrolyte and active"),
                         ("connected", "the active phase"), ("interconnected", "the pore"),
                         ("tortuosity-factor", "none")):
        p.add_argument(f"--{key}-phase", dest=f"{key.replace('-', '_')}_phase", action="append", metavar="NAME",
                       help=f"phase of the {key.replace('-', ' ')} (repeatable; 'none' for none; default {default})")
    p.add_argument("--coverage-by", metavar="NAME", help="covering phase of the coverage (default the electrolyte)")
    p.add_argument("--scheduler", help="compute the chunks on a dask.distributed cluster at tcp://HOST:PORT")
    p.add_argument("--chunk-voxels", type=int, help="chunk size of the whole-volume metrics (default 64000000)")
    p.add_argument("--tortuosity-max-voxels", type=int,
                   help="geometric tortuosity on a systematic sample of chunks within this budget (error published)")
    p.add_argument("--pictures", type=Path, metavar="DIR",
                   help="write the pictures (slice with labels, orthogonal views, drift, REV curves unless --no-rev) "
                        "here (default: VOLUME.pictures beside the volume)")
    p.add_argument("--no-pictures", action="store_true", help="do not write the pictures")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser(
        "compare",
        parents=logging_options,
        help="several volumes side by side as the columns of Table 1, with uncertainties",
        description="Table 1 of several volumes side by side (rows: metrics; columns: samples). Each value "
                    "carries its standard uncertainty u from the REV analysis of its own volume: Kanit's law "
                    "sigma^2(V) = K V^-alpha fitted on the variances of the metric over subvolume cubes, "
                    "extrapolated to the volume of the sample (u = sigma(V); Kanit's relative error is 2u/value). "
                    "A value is marked when it differs from the reference column by more than "
                    "k * sqrt(u_ref^2 + u^2).",
    )
    p.add_argument("volumes", type=Path, nargs="+",
                   help="revwatch OME-Zarr volumes or multi-page label TIFFs (2 or more)")
    p.add_argument("--names", nargs="+", metavar="NAME", help="column names, one per volume (default: file names)")
    p.add_argument("--reference", metavar="NAME", help="column the others are tested against (default: the first)")
    p.add_argument("--k", type=float, default=2.0,
                   help="coverage factor: marked when |a-b| > k*sqrt(ua^2+ub^2) (default 2)")
    p.add_argument("--samples", type=int, default=16, help="subvolume cubes per edge (default 16)")
    p.add_argument("--min-edge-um", type=float, default=1.0, help="smallest subvolume edge in um (default 1)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.add_argument("--csv", type=Path, help="also write the comparison as CSV here")
    p.add_argument("--figures", type=Path, metavar="DIR",
                   help="write rev_curves.png (Figure S8) and local_thickness.png (Figure S10) here")
    p.add_argument("--spacing-um", type=float, nargs=3, metavar=("DZ", "DY", "DX"),
                   help="voxel size of the label TIFFs")
    p.add_argument("--phase", action="append", default=[], metavar="LABEL=NAME",
                   help="label-to-phase mapping of the label TIFFs (as for `revwatch metrics`)")
    p.add_argument("--transport-axis", choices=("z", "y", "x"), default="y", help="transport direction (default y)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", parents=logging_options, help="per-stage throughput on this machine")
    p.add_argument("--quick", action="store_true", help="a short run (fewer, smaller slices)")
    p.add_argument("--slices", type=int, default=None, help="slices per size")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("keys", parents=logging_options, help="create CURVE key pairs for a non-loopback agent")
    p.add_argument("folder", type=Path, help="where to write the keys")
    p.add_argument("--client", action="append", metavar="NAME", help="client key pair to create (repeatable; default 'client')")
    p.add_argument("--force", action="store_true", help="overwrite existing keys")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("calibrate", parents=logging_options, help="the phase classes of the first slices against the named phases, as PNGs, "
                       "before a run (exit 1 on a mismatch)")
    p.add_argument("folder", type=Path, help="a folder holding the first slices")
    p.add_argument("--slices", type=int, default=None, help="slices to read (default processing.calibration_slices)")
    p.add_argument("--out", type=Path, default=Path("."), help="folder for calibration_histogram.png and "
                   "calibration_overlay.png (default: here)")
    _add_config_options(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("doctor", parents=logging_options, help="check a configuration and this machine, and say what to fix")
    p.add_argument("--expected-slices", type=int, default=2000, help="slices the run may reach (sizes the disk check)")
    _add_config_options(p)
    p.set_defaults(func=cmd_doctor)
    return parser


def _log_level(command: str, verbosity: int, log_level: str | None) -> int:
    """The console log level: `--log-level`, else the command's default lowered by each ``-v``."""
    if log_level is not None:
        return getattr(logging, log_level)
    default = logging.INFO if command == "run" else logging.WARNING
    return max(logging.DEBUG, default - 10 * verbosity)


def _setup_logging(level: int, log_file: Path | None = None) -> None:
    handlers = [logging.StreamHandler()]
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setLevel(min(level, logging.INFO))  # the file keeps the run's story even when the console is quiet
        handlers.append(file_handler)
    handlers[0].setLevel(level)
    logging.basicConfig(level=min(h.level or level for h in handlers), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``revwatch`` console script."""
    args = build_parser().parse_args(argv)
    _setup_logging(_log_level(args.command, args.verbose, args.log_level), getattr(args, "log_file", None))
    try:
        return args.func(args)
    except RevwatchError as exc:
        print(f"revwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"revwatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
