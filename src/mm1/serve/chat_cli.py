"""`mm1 chat`: a multi-turn conversation in the terminal, the reply streamed as it is generated.

Images attach to the next message (`--image` for the first, `/image PATH` at any turn).  A reply with boxes or points
(`[x1,y1,x2,y2]` / `[x,y]`, bins 0..999 of the original image) is also saved as a PNG of the last attached image with
the regions drawn on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mm1.data.coords import draw_regions, parse_regions
from mm1.data.image import ImageError
from mm1.serve.batching import Job, generate

HELP = "commands: /image PATH (attach to your next message), /reset (new conversation), /quit"


def run_chat(model, images: Sequence[str] = (), out_dir: str | Path = ".", max_tokens: int | None = None,
             temperature: float | None = None) -> None:
    """Reads messages with input() until /quit or end of input; prints replies as they stream."""
    processor, gen = model.processor, model.config.generation
    context = model.llm.config.max_position_embeddings
    max_tokens = max_tokens or gen.max_new_tokens
    temperature = gen.temperature if temperature is None else temperature
    out_dir = Path(out_dir)
    messages, conversation_images, pending = [], [], []
    try:
        pending = [processor.load_image(path) for path in images]
    except ImageError as err:
        raise SystemExit(f"mm1: {err}") from None
    print(HELP)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            messages, conversation_images, pending = [], [], []
            print("(new conversation)")
            continue
        if line.startswith("/image "):
            try:
                pending.append(processor.load_image(line.removeprefix("/image ").strip()))
                print(f"(image attached to your next message: {pending[-1].width}x{pending[-1].height})")
            except ImageError as err:
                print(f"(not attached: {err})")
            continue
        if line.startswith("/") or not line:
            print(HELP)
            continue
        user = {"role": "user", "content": [{"type": "image"}] * len(pending) + [{"type": "text", "text": line}]}
        try:
            prompt = processor.encode_chat(messages + [user], conversation_images + pending,
                                           add_generation_prompt=True)
        except ValueError as err:  # e.g. a literal "<image>" typed in the text
            print(f"({err})")
            continue
        if len(prompt.input_ids) + max_tokens > context:
            print(f"(the conversation is {len(prompt.input_ids)} tokens; with {max_tokens} new ones it would not fit "
                  f"the model's context of {context}; /reset to start again)")
            continue
        job = Job(prompt, processor.decode, lambda delta, _: print(delta, end="", flush=True), max_tokens,
                  temperature, gen.top_p)
        print("mm1> ", end="", flush=True)
        try:
            generate(model, [job])
        except KeyboardInterrupt:  # Ctrl-C stops this reply, not the session; the turn is dropped
            print("\n(stopped)")
            continue
        print()
        if job.error:
            print(f"({job.error})")
            continue
        reply = processor.decode(job.tokens)  # what was printed: with no stop strings, all of the text
        messages += [user, {"role": "assistant", "content": reply}]
        conversation_images += pending
        pending = []
        regions, _ = parse_regions(reply)
        if regions and conversation_images:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / f"grounding-{len(messages) // 2}.png"
            draw_regions(conversation_images[-1], regions).save(path)
            print(f"({len(regions)} region(s) drawn on the last image: {path})")
