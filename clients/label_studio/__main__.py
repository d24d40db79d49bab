"""Entry point of the Label Studio bridge (clients.label_studio.bridge).

    python -m clients.label_studio --coordinator host:port --pool NAME --frame-root /data/frames \
        --ls-url http://ls.example:8080 --ls-token TOKEN --media-dir /shared/ls-media \
        --ls-document-root /shared [--eem-target host:port] [--webhook-url http://me:8765/webhook]

    python -m clients.label_studio --start-local ...    # also start a Label Studio from .venv-ls

Every flag has an environment variable SEGXAL_LS_BRIDGE_<FLAG> (the token: SEGXAL_LS_BRIDGE_LS_TOKEN,
better than a flag that shows in `ps`); flags win. Runs until SIGINT / SIGTERM.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

from clients.label_studio.bridge import Bridge, BridgeConfig
from clients.label_studio.local import LocalLabelStudio, LocalLabelStudioConfig
from clients.labeling import add_labeling_args, labeling_config_from_args
from segxal.errors import SegxalError

ENV_PREFIX = "SEGXAL_LS_BRIDGE_"


def build_parser() -> argparse.ArgumentParser:
    d = BridgeConfig()
    env = lambda name, default: os.environ.get(ENV_PREFIX + name, default)  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m clients.label_studio", description=__doc__.splitlines()[0])
    add_labeling_args(p, ENV_PREFIX)
    p.add_argument("--ls-url", default=env("LS_URL", d.ls_url), help="Label Studio base URL")
    p.add_argument("--ls-token", default=env("LS_TOKEN", ""), help="Label Studio API token (legacy or personal)")
    p.add_argument("--project-title", default=env("PROJECT_TITLE", d.project_title),
                   help="project found by title, created when missing")
    p.add_argument("--project-id", type=int, default=int(env("PROJECT_ID", 0)), help="use this project (0: by title)")
    p.add_argument("--work-dir", default=env("WORK_DIR", d.work_dir), help="bridge state (and media by default)")
    p.add_argument("--media-dir", default=env("MEDIA_DIR", ""),
                   help="frames and heat maps for Label Studio to serve (default: WORK_DIR/ls-files/segxal)")
    p.add_argument("--ls-document-root", default=env("LS_DOCUMENT_ROOT", ""),
                   help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default: the media folder's parent)")
    p.add_argument("--ls-media-dir", default=env("LS_MEDIA_DIR", ""),
                   help="the media folder as Label Studio's host sees it (default: the same path)")
    env_roots = [r for r in env("FRAME_ROOTS", "").split(os.pathsep) if r]
    p.add_argument("--frame-root", dest="frame_roots", action="append", default=None,
                   help="folder frames and stored predictions may be read from (repeatable)")
    p.set_defaults(env_frame_roots=env_roots)
    p.add_argument("--eem-target", default=env("EEM_TARGET", ""), help="EEM service for the heat map")
    p.add_argument("--max-waiting", type=int, default=int(env("MAX_WAITING", d.max_waiting)),
                   help="coordinator tasks waiting in Label Studio at once")
    p.add_argument("--poll-s", type=float, default=float(env("POLL_S", d.poll_s)),
                   help="seconds between fallback polls of Label Studio")
    p.add_argument("--no-webhook", action="store_true", help="poll only")
    p.add_argument("--webhook-host", default=env("WEBHOOK_HOST", d.webhook_host),
                   help="address the webhook receiver listens on")
    p.add_argument("--webhook-port", type=int, default=int(env("WEBHOOK_PORT", d.webhook_port)),
                   help="its port (0: any free one)")
    p.add_argument("--webhook-url", default=env("WEBHOOK_URL", ""), help="URL Label Studio calls")
    p.add_argument("--start-local", action="store_true",
                   help="start Label Studio from .venv-ls with its data under --work-dir")
    p.add_argument("--ls-venv", default=env("LS_VENV", ".venv-ls"), help="Label Studio's own venv for --start-local")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args: argparse.Namespace) -> BridgeConfig:
    return BridgeConfig(
        labeling=labeling_config_from_args(args), ls_url=args.ls_url, ls_token=args.ls_token,
        project_title=args.project_title, project_id=args.project_id, work_dir=args.work_dir,
        media_dir=args.media_dir, ls_document_root=args.ls_document_root, ls_media_dir=args.ls_media_dir,
        frame_roots=list(args.frame_roots or args.env_frame_roots), eem_target=args.eem_target,
        max_waiting=args.max_waiting, poll_s=args.poll_s, webhook=not args.no_webhook,
        webhook_host=args.webhook_host, webhook_port=args.webhook_port, webhook_url=args.webhook_url)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    local = None
    try:
        if args.start_local:
            work = Path(cfg.work_dir).absolute()
            local = LocalLabelStudio(LocalLabelStudioConfig(
                data_dir=str(work / "label-studio-data"), document_root=str(cfg.document_root),
                venv=args.ls_venv, port=urlsplit(cfg.ls_url).port or 8080))
            local.start()
            cfg.ls_url, cfg.ls_token = local.url, local.token
            print(f"label studio at {local.url}: user {local.username}, password {local.password}", flush=True)
        with Bridge(cfg) as bridge:
            print(f"bridge: Label Studio project {bridge.project_id} at {cfg.ls_url}", flush=True)
            bridge.run(stop)
    except SegxalError as e:
        print(f"label studio bridge: error: {e}", file=sys.stderr)
        return 2
    finally:
        if local is not None:
            local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
