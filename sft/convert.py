"""`python -m sft.convert efficientnet-lite0 [--out DIR]`: a pretrained checkpoint that ships in a
package in another format, as a Hugging Face checkpoint directory (converted, verified against
the original computation, cached). Prints the directory. `--untrained --out DIR`: the same
architecture with random weights, to measure training from scratch against."""

from __future__ import annotations

import argparse

from sft import cli, pretrained
from sft.errors import SftError


def work(args: argparse.Namespace) -> str:
    if args.untrained:
        if not args.out:
            raise SftError("--untrained needs --out DIR (it is not cached)")
        return str(pretrained.untrained(args.name, args.out))
    return str(pretrained.checkpoint(args.name, args.out))


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("sft.convert", __doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(pretrained.CONVERTERS))
    parser.add_argument("--out", help="where to write it (default: the cache, $SFT_CACHE)")
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="the same architecture with random weights: the from-scratch baseline",
    )
    cli.run(parser, work, argv)


if __name__ == "__main__":
    main()
