"""The `r3p` console script: `r3p infer ...` (portrait + audio -> mp4), `r3p app ...` (web app),
`r3p convert ...` (official checkpoints -> r3p files)."""
from __future__ import annotations

import sys

COMMANDS = {
    "infer": "portrait + driving audio/video -> talking-portrait mp4 (python -m r3p.infer)",
    "app": "the Gradio web app (python -m r3p.app)",
    "convert": "official checkpoints -> r3p checkpoint folder (python -m r3p.convert)",
}


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help"):
    print("usage: r3p {" + ",".join(COMMANDS) + "} ...\n")
    for k, v in COMMANDS.items():
      print(f"  {k:8s} {v}")
    return 0 if argv else 2
  cmd, rest = argv[0], argv[1:]
  if cmd == "infer":
    from r3p import infer
    return infer.main(rest, prog="r3p infer")
  if cmd == "app":
    from r3p import app
    return app.main(rest)
  if cmd == "convert":
    from r3p.convert import cli as convert_cli
    return convert_cli.main(rest, prog="r3p convert")
  print(f"r3p: error: unknown command {cmd!r} (expected one of {', '.join(COMMANDS)})", file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main())
