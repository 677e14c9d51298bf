"""`mm1` command line."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from mm1.config import ConfigError, load_config, to_dict


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("recipe", nargs=None if required else "?", help="YAML recipe (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.connector.tokens=64 (repeatable)")


def cmd_config(args) -> None:
    print(yaml.safe_dump(to_dict(load_config(args.recipe, args.overrides)), sort_keys=False), end="")


def cmd_data_synth(args) -> None:
    import time

    from mm1.data.world import generate

    start = time.perf_counter()
    try:
        counts = generate(args.out, args.seed, args.size)
    except FileExistsError as err:
        raise SystemExit(f"mm1: {err}") from None
    for part, count in counts.items():
        print(f"{part:28} {count}")
    print(f"wrote {args.out} (size {args.size}, seed {args.seed}) in {time.perf_counter() - start:.1f} s")


def cmd_data_validate(args) -> int:
    from mm1.config import ImageConfig
    from mm1.data.image import load_image
    from mm1.data.readers import validate

    options = dict(item.split("=", 1) for item in args.option)
    stats = validate(args.format, args.path, lambda ref: load_image(ref, ImageConfig().max_pixels), **options)
    print(stats.report())
    return 1 if stats.skipped else 0


def cmd_demo(args) -> None:
    from mm1.demo import run_demo

    run_demo(load_config(args.recipe, args.overrides), world_size=args.world_size)


def cmd_ablate(args) -> None:
    from mm1.ablate import run_ablations

    run_ablations(args.spec, args.out, args.quick, [int(s) for s in args.seeds.split(",")] if args.seeds else None,
                  args.studies.split(",") if args.studies else None)


def cmd_train(args) -> None:
    from mm1.train.trainer import Trainer

    trainer = Trainer(load_config(args.recipe, args.overrides))
    exported = trainer.run(args.stage)
    trainer.log(f"model: {exported}")


def cmd_inspect_image(args) -> None:
    from mm1.data.inspect import inspect_image

    info = inspect_image(args.image, load_config(args.config, args.overrides), args.out, args.images_in_sample)
    print(f"{args.image}: {info['size'][0]}x{info['size'][1]} px, grid {info['grid'] or 'none (single view)'}, "
          f"{info['views']} views x {info['tokens_per_view']} tokens = {info['total_tokens']} image tokens")
    print(f"layout: {info['layout']}")
    print(f"wrote {args.out}")


def cmd_chat(args) -> None:
    from mm1.serve import load_model
    from mm1.serve.chat_cli import run_chat

    run_chat(load_model(args.model), args.image, args.out, args.max_tokens, args.temperature)


def cmd_serve(args) -> None:
    from pathlib import Path

    from mm1.serve.api import Limits, serve

    limits = Limits(max_body_bytes=args.max_body_mb * 2**20, max_images=args.max_images, max_pixels=args.max_pixels,
                    local_images=Path(args.local_images) if args.local_images else None,
                    allow_remote_images=args.allow_remote_images)
    serve(args.model, args.host, args.port, args.name, api_key=args.api_key,
          max_batch=1 if args.no_batching else args.max_batch, batch_window=args.batch_window_ms / 1000,
          limits=limits)


def cmd_eval(args) -> None:
    from pathlib import Path

    import torch

    from mm1.eval import evaluate
    from mm1.eval.report import format_table
    from mm1.serve import load_model

    model = load_model(args.model).to(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = model.config.eval
    tasks = args.tasks.split(",") if args.tasks else settings.tasks
    if not tasks:
        raise ConfigError("no tasks: give --tasks (built-in names or task YAML paths) or set eval.tasks in the model")
    shots = [int(k) for k in args.shots.split(",")] if args.shots else settings.shots
    out = Path(args.out or Path("runs/eval") / Path(args.model).resolve().name)
    summary = evaluate(model, tasks, shots, mode=args.mode or settings.mode, limit=args.limit or settings.limit,
                       batch_size=args.batch_size or settings.batch_size, seed=settings.seed,
                       data_root=args.data_root or settings.data_root, out_dir=out, model_name=args.model)
    print(format_table(summary["results"]))
    print(f"wrote {out}/report.md, summary.json, scores.png and predictions/")


def cmd_probe(args) -> None:
    import json

    from mm1.eval.probe import format_probe, probe
    from mm1.serve import load_model

    result = probe(load_model(args.model), args.fit, args.test, args.seed)
    print(format_probe(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "fit": args.fit, "test": args.test, "seed": args.seed,
                       "probes": result}, f, indent=1)
        print(f"wrote {args.out}")


def cmd_plan(args) -> None:
    from mm1.plan import format_plan, plan, to_json

    result = plan(load_config(args.recipe, args.overrides), args.gpus, args.gpu_memory, args.mfu,
                  args.peak_tflops * 1e12, args.target_days, args.stage,
                  images_per_sequence=args.images_per_sequence, views_per_image=args.views_per_image)
    print(to_json(result) if args.json else format_plan(result))


def cmd_export(args) -> None:
    from mm1.export import export_llava

    export_llava(args.model, args.out)
    print(f"wrote {args.out}: LlavaForConditionalGeneration, its processor and tokenizer")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mm1", description="MM1 / MM1.5 multimodal LLMs end to end")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print the resolved config of a recipe with overrides")
    add_config_args(p, required=False)
    p.set_defaults(func=cmd_config)
    p = sub.add_parser("demo", help="train, evaluate, save and query a tiny model on the synthetic world")
    add_config_args(p)
    p.add_argument("--world-size", default="default", choices=["small", "default"], help="synthetic world size")
    p.set_defaults(func=cmd_demo)
    data = sub.add_parser("data", help="data sets: generate the synthetic world").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("synth", help="write the synthetic world: every data format, train and held-out splits")
    p.add_argument("--out", required=True, help="new or empty folder to write to")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    p.add_argument("--size", choices=("small", "default"), default="default",
                   help="small: seconds, for tests; default: about a minute")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser("validate", help="read every record and decode every image; count and name the bad ones")
    p.add_argument("path", help="a file, a folder of shards, or a shard URL pattern")
    p.add_argument("--format", required=True, help="webdataset | interleaved | text | llava")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="reader option, e.g. category=math")
    p.set_defaults(func=cmd_data_validate)
    p = sub.add_parser("chat", help="multi-turn chat with a saved model in the terminal")
    p.add_argument("model", help="saved model directory")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="attach to the first message")
    p.add_argument("--out", default=".", help="folder for grounding pictures (answers with boxes or points)")
    p.add_argument("--max-tokens", type=int, help="default: the model's generation.max_new_tokens")
    p.add_argument("--temperature", type=float, help="default: the model's generation.temperature (0 = greedy)")
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP API and web chat page for a saved model")
    p.add_argument("model", help="saved model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--name", help="model name clients ask for (default: the directory name)")
    p.add_argument("--api-key", default=os.environ.get("MM1_API_KEY") or None,
                   help="require Authorization: Bearer KEY (default: $MM1_API_KEY; none: no key needed)")
    p.add_argument("--max-batch", type=int, default=8, help="requests generated together at most")
    p.add_argument("--batch-window-ms", type=float, default=20, help="how long to wait for requests to batch")
    p.add_argument("--no-batching", action="store_true", help="one request per generate call (--max-batch 1)")
    p.add_argument("--max-body-mb", type=int, default=20, help="largest request body")
    p.add_argument("--max-images", type=int, default=8, help="images per request")
    p.add_argument("--max-pixels", type=int, help="pixels per image (default and upper bound: the model's limit)")
    p.add_argument("--local-images", metavar="DIR", help="allow image_url file paths inside DIR")
    p.add_argument("--allow-remote-images", action="store_true", help="let the server fetch http(s) image URLs")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("train", help="run a recipe's stages (resumes from the latest checkpoints; torchrun-aware)")
    add_config_args(p)
    p.add_argument("--stage", default=None, help="run only this stage (from the previous stage's exported model)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("ablate", help="MM1's key ablations on the synthetic world: arms x seeds, table and plot")
    p.add_argument("spec", nargs="?", default="recipes/ablations/tiny.yaml",
                   help="ablation spec (YAML; default: recipes/ablations/tiny.yaml)")
    p.add_argument("--quick", action="store_true", help="the spec's quick steps and evaluation limits")
    p.add_argument("--seeds", help="comma-separated seeds (default: the spec's)")
    p.add_argument("--studies", help="comma-separated study names (default: all)")
    p.add_argument("--out", help="output folder (default: runs/ablate, or runs/ablate-quick with --quick)")
    p.set_defaults(func=cmd_ablate)
    p = sub.add_parser("inspect-image", help="show the grid, tiles and overview an image becomes, and its tokens")
    p.add_argument("image")
    p.add_argument("--config", default=None, help="YAML recipe whose model and image settings to use")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--images-in-sample", type=int, default=1, help="splitting is off for samples with many images")
    p.add_argument("--out", default="inspect.png", help="PNG to write")
    p.set_defaults(func=cmd_inspect_image)
    p = sub.add_parser("eval", help="benchmarks (zero-/few-shot, chat) with standard metrics, predictions and a report")
    p.add_argument("model", help="saved model directory")
    p.add_argument("--tasks", help="comma-separated built-in task names or task YAML paths (default: eval.tasks)")
    p.add_argument("--shots", help="comma-separated shot counts, e.g. 0,4,8 (default: eval.shots)")
    p.add_argument("--mode", choices=["auto", "base", "chat"],
                   help="prompting: base documents or chat turns; auto = few-shot base, 0-shot chat")
    p.add_argument("--limit", type=int, help="evaluate the first N samples of each task")
    p.add_argument("--batch-size", type=int, help="prompts generated together")
    p.add_argument("--data-root", help="folder relative task data paths resolve against")
    p.add_argument("--out", help="output folder (default: runs/eval/<model directory name>)")
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("probe", help="linear probes: which scene attributes and letters the image tokens carry")
    p.add_argument("model", help="saved model directory")
    p.add_argument("--fit", type=int, default=600, help="scenes of the training pairs (and letter signs) to fit on")
    p.add_argument("--test", type=int, default=300, help="scenes of the held-out pairs (and letter signs) to score")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the accuracies to this JSON file")
    p.set_defaults(func=cmd_probe)
    p = sub.add_parser("plan", help="parameters, memory per GPU, FLOPs and time per step of a recipe (no GPU needed)")
    add_config_args(p)
    p.add_argument("--gpus", type=int, required=True, help="processes (GPUs) the recipe runs on")
    p.add_argument("--gpu-memory", type=float, default=80, help="GB per GPU")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation")
    p.add_argument("--peak-tflops", type=float, default=989, help="peak per GPU (default: H100 dense bf16)")
    p.add_argument("--target-days", type=float, help="also give the GPUs needed to finish each stage in this time")
    p.add_argument("--stage", help="only this stage")
    p.add_argument("--images-per-sequence", type=float, help="default: as many as fit, up to the stage's maximum")
    p.add_argument("--views-per-image", type=float, help="default: 1, or max_tiles + 1 when splitting")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("export", help="write a saved model in the transformers LLaVA layout (mlp connector only)")
    p.add_argument("model", help="saved model directory")
    p.add_argument("out", help="folder to write")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ConfigError, FileNotFoundError, ValueError) as err:  # bad input: say what, without a traceback
        print(f"mm1: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
