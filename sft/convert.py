"""`python -m sft.convert NAME`: a package's pretrained weights as a Hugging Face checkpoint.

A pretrained checkpoint that ships in a package in another format becomes a checkpoint directory
(converted, verified against the original computation, cached; `--out DIR` puts it elsewhere,
`--OPTION VALUE` sets the converter's options). Prints the directory. `--untrained --out DIR`: the
same architecture with random weights, to measure training from scratch against."""

from __future__ import annotations

import argparse

from sft import cli, pretrained
from sft.errors import SftError
from sft.runs.directory import check_writable


def work(args: argparse.Namespace) -> str:
    given = {k: getattr(args, k) for k in _options() if getattr(args, k) is not None}
    if args.out:
        check_writable(args.out, "--out")
    if args.untrained:
        if not args.out:
            raise SftError("--untrained needs --out DIR (it is not cached)")
        return str(pretrained.untrained(args.name, args.out, **given))
    return str(pretrained.checkpoint(args.name, args.out, **given))


def _options() -> dict[str, str]:
    """Every converter's options (name -> help, naming the converters that take it)."""
    helps: dict[str, list[str]] = {}
    for name in pretrained.CONVERTERS:
        for option, text in pretrained.converter_of(name).OPTIONS.items():
            helps.setdefault(option, []).append(f"{name}: {text}")
    return {option: "; ".join(texts) for option, texts in helps.items()}


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("sft.convert", __doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(pretrained.CONVERTERS))
    parser.add_argument("--out", help="where to write it (default: the cache, $SFT_CACHE)")
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="the same architecture with random weights: the from-scratch baseline",
    )
    for option, text in _options().items():
        parser.add_argument(f"--{option}", help=text)
    cli.run(parser, work, argv)


if __name__ == "__main__":
    main()
