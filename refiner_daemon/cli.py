"""``refiner-daemon``: run the refinement daemon, ask it for its status, refine datasets, make keys.

    refiner-daemon serve --bind tcp://127.0.0.1:5555 --models models/ --device auto
    refiner-daemon status --endpoint tcp://127.0.0.1:5555 --jobs
    refiner-daemon refine out/render out/refined --model aggan_v1 --size 128
    refiner-daemon keygen --out keys/ --name daemon
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from protocol import processes
from protocol.cli import CliError, run_main
from protocol.errors import ProtocolError
from protocol.fileio import atomic_write_json, atomic_write_text
from protocol.messages import JobList, JobListReply
from protocol.transport import (
    Client,
    CurveClientKeys,
    CurveServerKeys,
    generate_keypair,
    is_loopback,
)
from protocol.version import DEFAULT_ENDPOINT

if TYPE_CHECKING:
    from refiner_daemon.refiner.batch_refine import BatchRefineConfig

PUBLIC_SUFFIX, SECRET_SUFFIX = ".pub", ".key"
DEFAULT_STATE_DIR = "out/refiner-daemon"

EPILOG = """\
examples:
  # serve the refiners in models/ on the loopback address, job records in out/daemon
  refiner-daemon serve --models models/ --state out/daemon --allow-root data/ --allow-root out/

  # serve on the network: CURVE keys are required, optionally only for listed clients
  refiner-daemon keygen --out keys/ --name daemon
  refiner-daemon keygen --out keys/ --name artist1
  refiner-daemon serve --bind tcp://0.0.0.0:5555 --models models/ --state out/daemon \\
      --curve-key keys/daemon --allow-client keys/artist1.pub

  # refine a rendered dataset through a running daemon (resumable; annotations copied as is)
  refiner-daemon refine out/render out/refined --model aggan_v1 --size 128 \
      --endpoint tcp://127.0.0.1:5555

  # what does a daemon offer, and what are its jobs doing?
  refiner-daemon status --endpoint tcp://127.0.0.1:5555 --jobs
  refiner-daemon status --endpoint tcp://host:5555 --server-key keys/daemon.pub \\
      --client-key keys/artist1
"""


REFINE_EPILOG = """\
examples:
  # start a daemon, then refine a render through it
  refiner-daemon serve --models models/ --bind tcp://127.0.0.1:5555 &
  refiner-daemon refine out/render out/render_refined --model aggan_v1 --size 128

  # the same against a daemon on another machine (CURVE keys)
  refiner-daemon refine out/render out/refined --model aggan_v1 \\
      --endpoint tcp://gpu-box:5555 --server-key keys/daemon.pub --client-key keys/artist1

  # no daemon: 2 refiner actors on a local Ray instance load models/aggan_v1.pt themselves
  refiner-daemon refine out/render out/refined --model aggan_v1 --size 128 \\
      --engine ray --models models/ --actors 2 --ray-cpus 4 --cpus-per-actor 2
  # ... on a Ray cluster, one GPU per actor (folders on a shared file system)
  refiner-daemon refine out/render out/refined --model aggan_v1 --engine ray \\
      --models models/ --address auto --actors 8 --gpus-per-actor 1 --device cuda

An interrupted run resumes: rerun the same command. A folder started with another model,
other weights or other crop settings is refused.
"""


def read_key(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except OSError as exc:
        raise CliError(f"cannot read key file {path} ({exc.strerror or exc}); make one with "
                       "`refiner-daemon keygen`") from None


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    public, secret = generate_keypair()
    secret_path = out / f"{args.name}{SECRET_SUFFIX}"
    if secret_path.exists() and not args.force:
        print(f"error: {secret_path} exists; pass --force to replace it", file=sys.stderr)
        return 2
    atomic_write_text(out / f"{args.name}{PUBLIC_SUFFIX}", public + "\n")
    atomic_write_text(secret_path, secret + "\n")
    os.chmod(secret_path, 0o600)  # the secret half is for this machine only
    print(f"wrote {out / (args.name + PUBLIC_SUFFIX)} (share it) and {secret_path} (keep it)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from refiner_daemon.serve.server import DaemonServer, ServerConfig
    from refiner_daemon.serve.service import RefinerService, ServiceConfig, ServiceError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    curve = None
    if args.curve_key:
        allowed = tuple(read_key(p) for p in args.allow_client) if args.allow_client else None
        curve = CurveServerKeys(read_key(args.curve_key + PUBLIC_SUFFIX),
                                read_key(args.curve_key + SECRET_SUFFIX), allowed)
    elif not is_loopback(args.bind):
        print(f"error: binding {args.bind} needs --curve-key (make keys with `refiner-daemon "
              "keygen`), or bind tcp://127.0.0.1:PORT", file=sys.stderr)
        return 2
    try:
        service_config = ServiceConfig(models_dir=args.models, state_dir=args.state,
                                       device=args.device, allowed_roots=tuple(args.allow_root),
                                       max_loaded_models=args.max_loaded_models)
        server_config = ServerConfig(bind=args.bind, max_queue=args.max_queue,
                                     max_queued_bytes=int(args.max_queued_mib * 1024 * 1024),
                                     batch_max_crops=args.batch_crops,
                                     batch_wait_ms=args.batch_wait_ms)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = {"service": service_config.to_dict(), "server": server_config.to_dict(),
              "curve": curve is not None}
    if args.dry_run:
        print(json.dumps(record, indent=2))
        return 0
    # Before torch loads (RefinerService imports it): OpenMP worker threads that spin after
    # each parallel region starve the socket loop on a small CPU. Measured on 2 cores: 29
    # one-crop requests/s with the default wait policy, 730 with PASSIVE (docs/daemon.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        service = RefinerService(service_config)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    atomic_write_json(Path(args.state) / "daemon.json", record)
    try:
        server = DaemonServer(service, server_config, curve=curve)
    except ProtocolError as exc:
        service.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    received: list[int] = []

    def on_stop(signum: int) -> None:
        received.append(signum)
        stop.set()

    # SIGINT, SIGTERM, SIGHUP: leave the serve loop; jobs are asked to stop (and resume on
    # restart); the exit code is 128 + the signal number.
    restore = processes.install_stop_handlers("refiner-daemon serve", on_stop=on_stop)
    print(f"refiner daemon on {server.endpoint}; device {service.device}; models "
          f"{service.available_models()}; Ctrl+C stops it (running jobs resume on restart)",
          flush=True)
    try:
        server.serve_forever(stop)
    finally:
        server.close()
        service.close()
        restore()
    return 128 + received[0] if received else 0


def client_keys(args: argparse.Namespace) -> CurveClientKeys | None:
    """The CURVE keys named by --server-key/--client-key, or None for a loopback daemon."""
    if not args.server_key:
        return None
    if not args.client_key:
        print("error: --server-key needs --client-key (make one with `refiner-daemon keygen`)",
              file=sys.stderr)
        raise SystemExit(2)
    return CurveClientKeys(read_key(args.server_key), read_key(args.client_key + PUBLIC_SUFFIX),
                           read_key(args.client_key + SECRET_SUFFIX))


def cmd_status(args: argparse.Namespace) -> int:
    curve = client_keys(args)
    try:
        with Client(args.endpoint, timeout_ms=args.timeout_ms, retries=args.retries,
                    curve=curve) as client:
            hello = client.handshake("refiner-daemon-status")
            jobs = client.request(JobList()) if args.jobs else None
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    caps = hello.capabilities
    status = {"endpoint": args.endpoint, "daemon_version": hello.daemon_version,
              "protocol_version": hello.protocol_version, "device": caps.device,
              "models": list(caps.models), "loaded_models": list(caps.loaded_models),
              "job_kinds": list(caps.job_kinds)}
    if isinstance(jobs, JobListReply):
        status["jobs"] = [job.to_dict() for job in jobs.jobs]
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    for key, value in status.items():
        if key != "jobs":
            print(f"{key:17} {value}")
    for job in status.get("jobs", []):
        step = job["progress"].get("step", "")
        print(f"job {job['job_id']}  {job['kind']:15} {job['state']:10} step {step}  "
              f"{job['message']}")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    """Refine a rendered dataset through a running daemon (``refiner_daemon.refiner.batch_refine``)."""
    from protocol.annotations import AnnotationError
    from protocol.errors import DaemonUnreachableError, RemoteError
    from refiner_daemon.refiner.batch_refine import (
        BatchRefineConfig,
        BatchRefineError,
        RefinerIdentity,
        refine_dataset,
    )

    try:
        config = BatchRefineConfig(crop_size=args.size, fit_margin_px=args.fit_margin,
                                   feather_px=args.feather)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        return _refine_on_ray(args, config)
    curve = client_keys(args)
    try:
        # A short timeout to find the daemon, then a long one: a batch may take a while.
        with Client(args.endpoint, timeout_ms=min(args.timeout_ms, args.connect_timeout_ms),
                    retries=args.retries, curve=curve) as client:
            hello = client.handshake("refiner-daemon-refine")
            models = list(hello.capabilities.models)
            if args.model not in models:
                print(f"error: the daemon at {args.endpoint} has no model {args.model!r}; its "
                      f"models: {models} (files <name>.pt in its --models folder)",
                      file=sys.stderr)
                return 2
            client.timeout_ms = args.timeout_ms
            # One probe crop: the model loads, and its sha256 goes into refiner.json.
            probe = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3),
                                                      dtype=np.uint8)
            sha256 = client.refine(args.model, probe).model_sha256
            identity = RefinerIdentity(model=args.model, model_sha256=sha256,
                                       daemon_version=hello.daemon_version,
                                       endpoint=args.endpoint)

            def refine_through_daemon(crops: np.ndarray) -> np.ndarray:
                result = client.refine(args.model, crops)
                if result.model_sha256 != sha256:
                    raise BatchRefineError(
                        f"the daemon's model {args.model!r} changed during the run (sha256 "
                        f"{sha256[:12]} -> {result.model_sha256[:12]}); rerun into a new "
                        "output folder")
                return result.images

            summary = refine_dataset(args.in_dir, args.out_dir, refine_through_daemon,
                                     identity, config, progress=not args.quiet)
    except DaemonUnreachableError as exc:
        print(f"error: {exc}; is the daemon running? start one with `refiner-daemon serve "
              f"--bind {args.endpoint} --models DIR`, or pass --endpoint", file=sys.stderr)
        return 1
    except RemoteError as exc:
        print(f"error: the daemon refused: {exc}", file=sys.stderr)
        return 1
    except (BatchRefineError, AnnotationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"refined {summary.frames_refined} frames ({summary.people_refined} people) into "
          f"{args.out_dir}; {summary.frames_skipped_done} already done; "
          f"{len(summary.people_skipped)} people skipped (see refine_report.json)")
    return 0


def _refine_on_ray(args: argparse.Namespace, config: BatchRefineConfig) -> int:
    """``refine --engine ray``: refiner actors instead of a daemon (``refiner.ray_refine``)."""
    from protocol.annotations import AnnotationError
    from refiner_daemon.refiner.batch_refine import BatchRefineError
    from refiner_daemon.refiner.ray_refine import RayRefineOptions, refine_dataset_ray

    if not args.models:
        print(f"error: --engine ray loads the model itself: pass --models DIR (the folder that "
              f"holds {args.model}.pt)", file=sys.stderr)
        return 2
    try:
        options = RayRefineOptions(
            actors=args.actors, cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.gpus_per_actor, frames_per_task=args.frames_per_task,
            address=args.address, ray_cpus=args.ray_cpus, max_retries=args.max_retries,
            device=args.device, precision=args.precision)
        summary = refine_dataset_ray(args.in_dir, args.out_dir,
                                     Path(args.models) / f"{args.model}.pt", config, options,
                                     progress=not args.quiet)
    except (BatchRefineError, AnnotationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"refined {summary.frames_refined} frames ({summary.people_refined} people) into "
          f"{args.out_dir} on Ray; {summary.frames_skipped_done} already done; "
          f"{len(summary.people_skipped)} people skipped (see refine_report.json)")
    return 0


def _add_client_options(parser: argparse.ArgumentParser, timeout_ms: int) -> None:
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                        help="the daemon's endpoint (default %(default)s)")
    parser.add_argument("--timeout-ms", type=int, default=timeout_ms,
                        help="how long one try waits for a reply (default %(default)s)")
    parser.add_argument("--retries", type=int, default=1,
                        help="tries after the first, on a fresh socket (default %(default)s)")
    parser.add_argument("--server-key", metavar="PUBFILE", help="the daemon's public key file")
    parser.add_argument("--client-key", metavar="PREFIX", help="reads PREFIX.pub and PREFIX.key")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="refiner-daemon", description=__doc__.split("\n")[0],
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the daemon", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--bind", default=DEFAULT_ENDPOINT,
                       help="ZeroMQ endpoint (default %(default)s; non-loopback needs keys)")
    serve.add_argument("--models", required=True, help="folder of exported refiners <name>.pt")
    serve.add_argument("--state", default=DEFAULT_STATE_DIR,
                       help="folder for job records, default run folders and daemon.json "
                            "(default %(default)s)")
    serve.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    serve.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                       help="a folder job configs may read and write (repeatable)")
    serve.add_argument("--max-loaded-models", type=int, default=4)
    serve.add_argument("--max-queue", type=int, default=32,
                       help="queued refine requests before clients are told to retry")
    serve.add_argument("--max-queued-mib", type=float, default=1024,
                       help="MiB of queued crops before clients are told to retry "
                            "(default %(default)s)")
    serve.add_argument("--batch-crops", type=int, default=64, help="most crops per model call")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0,
                       help="how long a request may wait for others to share its batch")
    serve.add_argument("--curve-key", metavar="PREFIX",
                       help="serve with CURVE: reads PREFIX.pub and PREFIX.key")
    serve.add_argument("--allow-client", action="append", default=[], metavar="PUBFILE",
                       help="with --curve-key: accept only these client public keys")
    serve.add_argument("--dry-run", action="store_true", help="print the config and exit")
    serve.set_defaults(run=cmd_serve)

    status = commands.add_parser("status", help="ask a daemon what it offers and runs")
    _add_client_options(status, timeout_ms=2000)
    status.add_argument("--jobs", action="store_true", help="also list the jobs")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(run=cmd_status)

    refine = commands.add_parser(
        "refine", help="refine a rendered dataset through a running daemon",
        description="Crop every person of every frame of IN_DIR (fitted to their mask), refine "
                    "the crops with the daemon's model, blend them back under each person's own "
                    "mask and write the refined dataset to OUT_DIR: images replaced, annotations "
                    "(coco.json, masks/, frames/, run_config.json) copied byte for byte, and "
                    "refiner.json recording the model. Rerunning the same command resumes.",
        epilog=REFINE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    refine.add_argument("in_dir", metavar="IN_DIR", help="rendered dataset (holds coco.json)")
    refine.add_argument("out_dir", metavar="OUT_DIR", help="where the refined dataset goes")
    refine.add_argument("--model", required=True, help="the daemon's model name (<name>.pt)")
    refine.add_argument("--size", type=int, default=128,
                        help="crop side in pixels, even (default %(default)s)")
    refine.add_argument("--fit-margin", type=float, default=10.0,
                        help="pixels between the person's mask and the crop border "
                             "(default %(default)s)")
    refine.add_argument("--feather", type=float, default=10.0,
                        help="blend ramp width at crop borders, crop pixels (default %(default)s)")
    _add_client_options(refine, timeout_ms=120_000)
    refine.add_argument("--connect-timeout-ms", type=int, default=5000,
                        help="how long the first handshake waits (default %(default)s)")
    refine.add_argument("--quiet", action="store_true", help="no progress bar")
    ray_group = refine.add_argument_group(
        "refining on Ray (--engine ray: no daemon; refiner actors load --models DIR/MODEL.pt)")
    ray_group.add_argument("--engine", choices=("daemon", "ray"), default="daemon",
                           help="daemon: through a running daemon (default); ray: Ray actors "
                                "(needs 'pip install ray==2.60.0')")
    ray_group.add_argument("--models", metavar="DIR", help="ray: folder of exported refiners <name>.pt")
    ray_group.add_argument("--actors", type=int, default=2, help="ray: refiner actors (default 2)")
    ray_group.add_argument("--cpus-per-actor", type=int, default=1,
                           help="ray: CPUs each actor declares, also its torch threads (default 1)")
    ray_group.add_argument("--gpus-per-actor", type=float, default=0.0,
                           help="ray: GPUs each actor declares (default 0)")
    ray_group.add_argument("--frames-per-task", type=int, default=8,
                           help="ray: frames per actor call (default 8)")
    ray_group.add_argument("--address", metavar="ADDR",
                           help="ray: join this cluster; default: a local Ray instance")
    ray_group.add_argument("--ray-cpus", type=int, metavar="N",
                           help="ray: CPUs of the local Ray instance (default: all)")
    ray_group.add_argument("--max-retries", type=int, default=3,
                           help="ray: restarts of a dead actor and retries of its call (default 3)")
    ray_group.add_argument("--device", default="auto", help="ray: auto, cpu, cuda or cuda:N")
    ray_group.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                           help="ray: the actors' precision, the same for all so that the output "
                                "does not depend on which actor refines which frame (default fp32)")
    refine.set_defaults(run=cmd_refine)

    keygen = commands.add_parser("keygen", help="make a CURVE key pair")
    keygen.add_argument("--out", required=True, help="folder for NAME.pub and NAME.key")
    keygen.add_argument("--name", default="daemon")
    keygen.add_argument("--force", action="store_true", help="replace existing keys")
    keygen.set_defaults(run=cmd_keygen)

    # Training runs in this process, without a daemon; `refiner-daemon serve` runs the same
    # trainer as a background job when a client asks for one.
    from refiner_daemon.refiner.train import add_train_parser, run_from_args

    add_train_parser(commands).set_defaults(run=run_from_args)
    return parser


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


def main(argv: list[str] | None = None) -> int:
    """``refiner-daemon``, under ``protocol.cli.run_main``: bad input prints one line and
    exits 2 (traceback with --debug or FISHEYE_DEBUG=1); a stop signal exits 128 + N."""
    return run_main(_main, argv, prog="refiner-daemon")


if __name__ == "__main__":
    raise SystemExit(main())
