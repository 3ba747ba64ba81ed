"""The model of the CPU smoke runs (``recipes/*/run_smoke_cpu.sh``): the tiny random Qwen2.5-VL of
``tests/tiny_models.py``, warmed up for a few seconds on PyVision episodes.

A random model writes no ``<code>`` or ``<answer>`` tag, so every rollout would be malformed (dropped as
broken) and GRPO would have nothing to train on. The warm-up is plain supervised training on real
episodes of ``PyVisionImage-v0`` (the env's own prompts, interpreter replies and frames, the real chat
template and processor): a code turn that prints the image size and displays a crop, then, after the
interpreter's reply, an answer drawn from ``ANSWERS``. Sampled at temperature 1, its rollouts mostly
follow that pattern: they call the tool, hold two images, answer some counting tasks right and the other
tasks wrong (groups with and without reward spread), and a few go astray (broken groups). That is what
the smoke run needs to show the sampler's filtering, the tool reward and a real policy-gradient update
on multi-image trajectories. The model learns no vision.

    PYTHONPATH=tests python tests/verl/smoke_model.py OUT_DIR
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from PIL import Image
from tiny_models import tiny_qwen25_vl
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

import pyvision_env  # noqa: F401  (registers the env ids)
from pyvision_agent.episode import Episode, Turn, build_messages
from pyvision_agent.verl.data import synthetic_tasks

ENV_ID = "PyVisionImage-v0"
CODE_TURN = "<code>\n```python\nprint(image_clue_0.size)\ndisplay(image_clue_0.crop((0, 0, 96, 96)))\n```\n</code>"
# Answer turns open with words (not a tag, unlike the code turn) of three lengths, so the trajectories of one
# prompt differ in length: a batch of equal-length trajectories trips verl 0.9.1 (tests/verl/test_smoke_cpu.py).
ANSWER_OPENINGS = ("Done. ", "The code ran. ", "The crop is shown above. ")
ANSWERS = ("1", "2", "3")


def _episode_messages(task: Any, rng: random.Random) -> list[dict[str, Any]]:
    """One played episode as chat messages (images as PIL): the code turn, the interpreter's reply, an answer."""
    env = gym.make(ENV_ID, tasks=[task])
    try:
        obs, info = env.reset(options={"task": task})
        episode = Episode.from_reset(ENV_ID, obs, info, image_placeholder=env.unwrapped.config.image_placeholder)
        obs, _, terminated, truncated, _ = env.step(CODE_TURN)
        if terminated or truncated or len(obs["images"]) != 1:
            raise RuntimeError(f"the warm-up code turn did not run as meant: {obs['text'][:300]!r}")
        episode.add(Turn(CODE_TURN), obs)
        episode.add(Turn(f"{rng.choice(ANSWER_OPENINGS)}<answer>\\boxed{{{rng.choice(ANSWERS)}}}</answer>"))
    finally:
        env.close()
    return [{**m, "content": [{**p, "image": Image.fromarray(p["image"])} if p["type"] == "image" else p
                              for p in m["content"]]} if isinstance(m["content"], list) else m
            for m in build_messages(episode, images="array")]


def _example(messages: list[dict[str, Any]], tokenizer: Any, image_processor: Any) -> dict[str, torch.Tensor]:
    """Token ids (image placeholders expanded), labels on the assistant turns only, pixel values."""
    images = [p["image"] for m in messages if isinstance(m["content"], list) for p in m["content"]
              if p["type"] == "image"]
    pixels = image_processor(images=images, return_tensors="pt") if images else None
    runs = iter((pixels["image_grid_thw"].prod(-1) // image_processor.merge_size ** 2).tolist() if images else [])
    pad = "<|image_pad|>"
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:j], tokenize=False, add_generation_prompt=True)
        target = message["content"] + tokenizer.eos_token  # <|im_end|>: the model learns to end its turn
        context = prefix[len(done):]
        pieces = context.split(pad)
        context = "".join(piece + (pad * next(runs) if k < len(pieces) - 1 else "") for k, piece in enumerate(pieces))
        context_ids = tokenizer.encode(context, add_special_tokens=False)
        target_ids = tokenizer.encode(target, add_special_tokens=False)
        ids += context_ids + target_ids
        labels += [-100] * len(context_ids) + target_ids
        done = prefix + target
    input_ids = torch.tensor([ids])
    example = {"input_ids": input_ids, "labels": torch.tensor([labels])}
    if pixels is not None:  # image tokens marked, so that they get M-RoPE positions (as in rollouts and training)
        example |= {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"],
                    "mm_token_type_ids": (input_ids == tokenizer.convert_tokens_to_ids(pad)).int()}
    return example


def warm_up(path: str | Path, *, episodes: int = 32, epochs: int = 30, lr: float = 3e-3, seed: int = 0) -> None:
    """Train the model at ``path`` on ``episodes`` played episodes for ``epochs`` epochs (the learning rate
    falling linearly to 0, so that the last steps settle the turn format), in place."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessor.from_pretrained(path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa")
    data = [_example(_episode_messages(task, rng), tokenizer, image_processor)
            for task in synthetic_tasks("image", episodes, start=10_000)]  # seeds the smoke data never uses
    model.model.visual.requires_grad_(False)  # it learns no vision anyway (and the recipe freezes it too)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    steps = epochs * len(data)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    model.train()
    for _ in range(epochs):
        rng.shuffle(data)
        for example in data:
            model(**example).loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    model.eval()
    model.save_pretrained(path)


def build(path: str | Path) -> Path:
    """The smoke model at ``path``: the tiny Qwen2.5-VL with images of at most 224 x 224 pixels (64 visual
    tokens: rollouts, training and the warm-up stay quick on a CPU), warmed up."""
    path = tiny_qwen25_vl(path)
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=224 * 224).save_pretrained(path)
    warm_up(path)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="directory to write the model to")
    print(f"wrote {build(parser.parse_args().out)}")
