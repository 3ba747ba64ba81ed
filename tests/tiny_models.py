"""Tiny real models for the tests, built from configs: random weights, a tokenizer trained on the fly.

Nothing is downloaded. ``tiny_qwen25_vl`` is a 2-layer Qwen2.5-VL (vision tower included) with Qwen's
special tokens, the Qwen2-VL chat template and a ``Qwen2VLImageProcessor`` config, so the code paths of
the real model family run (image placeholders, grid sizes, M-RoPE); ``tiny_qwen2_text`` is a text-only
Qwen2 with head_dim 64 (what vLLM's CPU backend accepts). Their outputs are junk by design: the envs and
the policies must take junk gracefully.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's chat template (one <|vision_start|><|image_pad|><|vision_end|> per image part).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "<code>\n```python\nprint(image_clue_0.size)\nimport numpy as np\narr = np.array(image_clue_0)\n```\n</code>",
    "<answer>\\boxed{4}</answer> <interpreter> Text Result: (no output) </interpreter> <image_clue_0>",
    "frames = video_clue_0.get_batch([0, 10, 20]).asnumpy()\nplt.imshow(frames[0])\nplt.show()",
    "You are a visual assistant that solves problems by writing Python code. How many shapes are there?",
    "Traceback (most recent call last): NameError: name 'x' is not defined 0123456789 A B C D",
]


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIAL_TOKENS[1:])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_qwen25_vl(path: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny random Qwen2.5-VL (model, tokenizer, chat template, image processor) to ``path``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    path = Path(path)
    tokenizer = _tokenizer(600)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 32768, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                     "tie_word_embeddings": True, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                       "fullatt_block_indexes": [1], "in_chans": 3},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # 3,136 to 200,704 pixels: small grids keep CPU generation fast while the bookkeeping stays real.
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=448 * 448).save_pretrained(path)
    _write_chat_template(path)
    return path


def tiny_qwen2_text(path: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny random text-only Qwen2 (head_dim 64, as vLLM's CPU attention needs) to ``path``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    tokenizer = _tokenizer(600)
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=64, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad,
                         torch_dtype="float32")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _write_chat_template(path)
    return path


def _write_chat_template(path: Path) -> None:
    """Also as ``chat_template.json``: processors and servers (vLLM) look for the template there."""
    (path / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
