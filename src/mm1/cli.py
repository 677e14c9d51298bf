"""`mm1` command line."""

from __future__ import annotations

import argparse
import sys

import yaml

from mm1.config import ConfigError, load_config, to_dict


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("recipe", nargs=None if required else "?", help="YAML recipe (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.connector.tokens=64 (repeatable)")


def cmd_config(args) -> None:
    print(yaml.safe_dump(to_dict(load_config(args.recipe, args.overrides)), sort_keys=False), end="")


def cmd_demo(args) -> None:
    from mm1.demo import run_demo

    run_demo(load_config(args.recipe, args.overrides), eval_samples=args.eval_samples)


def cmd_inspect_image(args) -> None:
    from mm1.data.inspect import inspect_image

    info = inspect_image(args.image, load_config(args.config, args.overrides), args.out, args.images_in_sample)
    print(f"{args.image}: {info['size'][0]}x{info['size'][1]} px, grid {info['grid'] or 'none (single view)'}, "
          f"{info['views']} views x {info['tokens_per_view']} tokens = {info['total_tokens']} image tokens")
    print(f"layout: {info['layout']}")
    print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm1", description="MM1 / MM1.5 multimodal LLMs end to end")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print the resolved config of a recipe with overrides")
    add_config_args(p, required=False)
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("demo", help="train, evaluate, save and query a tiny model on the synthetic world")
    add_config_args(p)
    p.add_argument("--eval-samples", type=int, default=64, help="held-out questions per task")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("inspect-image", help="show the grid, tiles and overview an image becomes, and its tokens")
    p.add_argument("image")
    p.add_argument("--config", default=None, help="YAML recipe whose model and image settings to use")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--images-in-sample", type=int, default=1, help="splitting is off for samples with many images")
    p.add_argument("--out", default="inspect.png", help="PNG to write")
    p.set_defaults(func=cmd_inspect_image)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as err:
        print(f"mm1: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
