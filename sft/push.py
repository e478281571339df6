"""Publish a finished run: `python -m sft.push <run_dir> --repo-id <user/name> [--private]`.

Model, tokenizer / processor, config.yaml, metrics.json, plots/ and a model card, in one commit
(see sft/publishing/hub.py). The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT
points at another hub (a company mirror, or a test server).
"""

from __future__ import annotations

from sft import cli
from sft.publishing.hub import push


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("sft.push", __doc__.split("\n")[0])
    parser.add_argument("run_dir", help="the directory of a finished run (holds metrics.json)")
    parser.add_argument("--repo-id", required=True, help="user/name or org/name on the hub")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    cli.run(parser, lambda args: push(args.run_dir, args.repo_id, args.private), argv)


if __name__ == "__main__":
    main()
