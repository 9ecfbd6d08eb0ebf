"""LatentProcessor: the prompt layout TRL's VLM path sees (chat template + <img>×P + <bot><lat>×K<eot>)."""

import pytest
import torch

from rlattn.backbones import LatentProcessor
from rlattn.data.synthetic import generate_quadrant
from rlattn.backbones.processor import conversation_with_images
from rlattn.testing import byte_tokenizer


def _proc(K=2, P=16, size=32):
    return LatentProcessor(byte_tokenizer(), num_latents=K, num_image_tokens=P, image_size=size)


def test_text_layout_and_tokens():
    proc = _proc(K=3, P=0, size=0)
    conv = [{"role": "user", "content": "hi"}]
    text = proc.apply_chat_template(conv, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<bot><lat><lat><lat><eot>"
    assert proc.apply_chat_template(conv, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"
    ids = proc.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
    tok = proc.tokenizer
    assert ids[-5:] == tok.convert_tokens_to_ids(["<bot>", "<lat>", "<lat>", "<lat>", "<eot>"])
    # TRL's string-content-as-blocks form renders the same
    blocks = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert proc.apply_chat_template(blocks, add_generation_prompt=True) == text


def test_image_layout_pixel_values_and_batch():
    proc = _proc()
    ds = generate_quadrant(3, seed=0)
    convs = [conversation_with_images(r["prompt"], r["image"]) for r in ds]
    text = proc.apply_chat_template(convs[0], add_generation_prompt=True)
    assert text.count("<img>") == 16 and text.index("<img>") < text.index("Where is the red square?")
    enc = proc.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=True)
    img_id = proc.image_token_id
    assert [ids.count(img_id) for ids in enc["input_ids"]] == [16, 16, 16]
    assert enc["pixel_values"].shape == (3, 3, 32, 32)
    assert float(enc["pixel_values"].max()) <= 1.0 and float(enc["pixel_values"].min()) >= 0.0
    # the call TRL makes for the forward kwargs: rendered text + per-prompt image lists
    texts = [proc.apply_chat_template(c, add_generation_prompt=True) for c in convs]
    out = proc(images=[[r["image"]] for r in ds], text=texts, padding=True, return_tensors="pt")
    assert out["input_ids"].shape[0] == 3 and torch.equal(out["pixel_values"], enc["pixel_values"])


def test_processor_errors():
    proc = _proc(P=0, size=0)
    ds = generate_quadrant(1, seed=0)
    with pytest.raises(ValueError, match="num_image_tokens=0"):
        proc.apply_chat_template(conversation_with_images(ds[0]["prompt"], ds[0]["image"]), add_generation_prompt=True)
    with pytest.raises(ValueError, match="unsupported content part type 'audio'"):
        proc.apply_chat_template([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ValueError, match="more image parts than images"):
        conversation_with_images(ds[0]["prompt"], [])
    big = _proc(size=16)
    with pytest.raises(ValueError, match="latent_image_size=16"):
        big(text=["x"], images=[[ds[0]["image"]]])
