"""``diffzoo serve``: a bundle behind NVIDIA Triton Inference Server (KServe v2, dynamic batching, metrics)."""

from __future__ import annotations

import argparse
import signal
import sys

from runtime.apps.commands.common import positive_int


def register(sub) -> None:
    from runtime.apps.serve.server import RESTRICTED_APIS
    from runtime.apps.serve.server import ServeOptions as O
    from runtime.providers import PROVIDERS
    from runtime.requests import MODES

    p = sub.add_parser("serve", help="serve a bundle on Triton Inference Server (needs no torch)")
    p.add_argument("bundle", help="bundle directory from `diffzoo export`")
    p.add_argument("--host", default=O.host,
                   help=f"address to listen on (default {O.host}, loopback only); Triton has no authentication: put a "
                        "public address behind a proxy that has it")
    p.add_argument("--http-port", type=positive_int, default=O.http_port, help=f"KServe v2 HTTP port (default {O.http_port})")
    p.add_argument("--grpc-port", type=positive_int, default=O.grpc_port, help=f"KServe v2 gRPC port (default {O.grpc_port})")
    p.add_argument("--metrics-port", type=positive_int, default=O.metrics_port,
                   help=f"Prometheus metrics port (default {O.metrics_port})")
    p.add_argument("--model-name", default=O.model_name, help=f"the model's name in the server (default {O.model_name})")
    p.add_argument("--max-batch", type=positive_int, default=O.max_batch,
                   help=f"images per batch and per request (default {O.max_batch}); 1 turns dynamic batching off")
    p.add_argument("--max-queue-delay-ms", type=float, default=O.max_queue_delay_ms,
                   help=f"how long the batcher waits for more images (default {O.max_queue_delay_ms:g} ms)")
    p.add_argument("--max-queue", type=positive_int, default=O.max_queue,
                   help=f"queued requests beyond this are refused at once, HTTP 503 (default {O.max_queue}); the dynamic "
                        "batcher's, so not with --max-batch 1")
    p.add_argument("--instances", type=positive_int, default=O.instances,
                   help=f"model instances, one process each: one per GPU or per core group (default {O.instances})")
    p.add_argument("--provider", choices=PROVIDERS, default=O.provider, help="auto (default): CUDA if it loads, else CPU")
    p.add_argument("--mode", choices=MODES, default=O.mode, help=f"the sampler mode every request runs in (default {O.mode})")
    p.add_argument("--cuda-graph", action="store_true", help="with --mode fused on CUDA: replay the step as a CUDA graph")
    p.add_argument("--threads", type=positive_int, default=O.threads,
                   help="onnxruntime intra-op threads per instance (default: onnxruntime's, every core)")
    p.add_argument("--exit-timeout", type=positive_int, default=O.exit_timeout_s,
                   help=f"on Ctrl-C or SIGTERM, seconds in-flight requests get to finish (default {O.exit_timeout_s})")
    p.add_argument("--allow-api", default="",
                   help=f"Triton APIs to open to every client, comma-separated, of {','.join(RESTRICTED_APIS)} (default "
                        "none: no diffzoo client needs them, and they let any local client reach into the server)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from runtime.apps.commands.common import Terminated
    from runtime.apps.serve.server import ServeOptions, TritonServer

    options = ServeOptions(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                           model_name=args.model_name, max_batch=args.max_batch, max_queue_delay_ms=args.max_queue_delay_ms,
                           max_queue=args.max_queue, instances=args.instances, provider=args.provider, mode=args.mode,
                           cuda_graph=args.cuda_graph, threads=args.threads, exit_timeout_s=args.exit_timeout,
                           allow_api=tuple(a.strip() for a in args.allow_api.split(",") if a.strip()))
    options.check()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops it even where SIGINT was ignored (`cmd &`)
    server = TritonServer(args.bundle, options, log_file=sys.stderr, verbose=args.verbose)
    try:
        server.start()
        o = options
        print(f"serving {args.bundle} as model {o.model_name!r} ({o.mode} mode, {server.provider}, {o.instances} instance(s), "
              f"max batch {o.max_batch}): HTTP {server.url}, gRPC {server.grpc_url}, metrics {server.metrics_url}; "
              "Ctrl-C or SIGTERM stops it", flush=True)
        if o.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {o.host}: Triton has no authentication; put it behind a proxy that has it",
                  file=sys.stderr, flush=True)
        why = server.watch()  # returns once the server cannot answer every request: stop, and exit non-zero
        print(f"diffzoo serve: error: {why}; stopping so that it can be replaced", file=sys.stderr, flush=True)
        server.stop()
        return 1
    except (KeyboardInterrupt, Terminated):
        if server.process is None:
            raise  # interrupted during start-up: nothing was serving
        server.stop()
        print("stopped: in-flight requests finished, the server and its model instances are gone", flush=True)
        return 0
    finally:
        server.stop()
