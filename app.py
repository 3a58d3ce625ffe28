"""The rglcd comparison demo: teacher, LCM, RG-LCM and MLCM side by side, with live rewards.

    python app.py                      # the embedded emoji-64 family, offline, CPU
    python app.py --family sd21        # the real family (GPU, hub); a Space sets RGLCD_FAMILY instead

The page and its `/compare` API are built by `rglcd.demo`; models load on the first request and stay loaded.
"""

from __future__ import annotations

import argparse
import os

from rglcd.demo import Engine, build_app, serve_from_private_folder
from rglcd.logs import quiet_libraries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default=os.environ.get("RGLCD_FAMILY", "emoji-64"),
                        help="preset (emoji-64, sd21, sd21-base), family.json or its folder; env RGLCD_FAMILY")
    parser.add_argument("--host", default=None, help="address to listen on (gradio default: GRADIO_SERVER_NAME or "
                        "127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (gradio default: GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="comparisons running at the same time (sampled together, column by column)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when there is one, else cpu)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="torch CPU threads per op (default: half the cores: the teacher and the students sample "
                        "side by side)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' loading bars and warnings")
    args = parser.parse_args()
    quiet_libraries(args.verbose)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve_from_private_folder()
    app = build_app(Engine(args.family, device=args.device), concurrency=args.concurrency)
    app.launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
