"""``LatentProcessor``: the processing class that lays prompts out for :class:`LatentPolicy`.

Why a processor: TRL's GRPOTrainer carries images through generation and the loss only for a
``ProcessorMixin`` processing class (its VLM path: image parts of conversational prompts,
``pixel_values`` into ``generate`` and every forward). This one wraps the policy's tokenizer and
does what a VLM processor does, for rlattn's layout:

    chat_template(messages with each image part -> <img>×P) + <bot> <lat>×K <eot>

so every prompt ends in the latent slots, images become ``pixel_values`` [N_img, 3, H, W] in
[0, 1], and completions decode through the tokenizer. Text-only prompts work the same way (no
``pixel_values``).
"""

from __future__ import annotations

import torch
from transformers import BatchFeature, ProcessorMixin

from .latent import BOT_TOKEN, EOT_TOKEN, IMAGE_TOKEN, LATENT_TOKEN, add_backbone_tokens


class LatentProcessor(ProcessorMixin):
    """Tokenizer + image layout for a LatentPolicy. Build it with the policy's settings:

        proc = LatentProcessor(tok, num_latents=2, num_image_tokens=16, image_size=32)
    """

    def __init__(self, tokenizer, num_latents: int = 2, num_image_tokens: int = 0, image_size: int = 0,
                 chat_template=None):
        add_backbone_tokens(tokenizer)
        super().__init__(tokenizer, chat_template=chat_template)
        self.num_latents = int(num_latents)
        self.num_image_tokens = int(num_image_tokens)
        self.image_size = int(image_size)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def latent_suffix(self) -> str:
        return BOT_TOKEN + LATENT_TOKEN * self.num_latents + EOT_TOKEN

    # ---------------------------------------------------------------- chat layout

    def _flatten(self, messages) -> tuple[list[dict], list]:
        """Messages with string content (image parts -> <img>×P) and the images found, in order."""
        flat, images = [], []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    kind = part.get("type")
                    if kind == "image":
                        if self.num_image_tokens <= 0:
                            raise ValueError("a prompt has an image part but the processor has num_image_tokens=0 "
                                             "(set latent_image_size > 0 for an image-conditioned policy)")
                        images.append(part.get("image"))
                        parts.append(IMAGE_TOKEN * self.num_image_tokens)
                    elif kind == "text":
                        parts.append(part.get("text") or "")
                    else:
                        raise ValueError(f"unsupported content part type {kind!r} (allowed: 'text', 'image')")
                content = "\n".join(p for p in parts if p)
            flat.append({**{k: v for k, v in m.items() if k != "content"}, "content": content})
        return flat, images

    def apply_chat_template(self, conversation, chat_template=None, tools=None, add_generation_prompt=False,
                            tokenize=False, return_dict=False, continue_final_message=False, **kwargs):
        """Render one conversation or a batch; with ``add_generation_prompt`` the latent suffix is
        appended. ``tokenize=True, return_dict=True`` gives ``input_ids`` (unpadded lists),
        ``attention_mask`` and, when there are images, ``pixel_values``."""
        batched = bool(conversation) and isinstance(conversation[0], list)
        convs = conversation if batched else [conversation]
        texts, all_images = [], []
        for conv in convs:
            flat, images = self._flatten(conv)
            text = self.tokenizer.apply_chat_template(flat, chat_template=chat_template or self.chat_template,
                                                      tools=tools, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt,
                                                      continue_final_message=continue_final_message)
            if add_generation_prompt:
                text = text + self.latent_suffix
            texts.append(text)
            all_images.append(images)
        if not tokenize:
            return texts if batched else texts[0]
        has_images = any(all_images)
        out = self(text=texts, images=all_images if has_images else None)
        if not return_dict:
            return out["input_ids"] if batched else out["input_ids"][0]
        if not batched:
            out = BatchFeature({k: (v[0] if k != "pixel_values" else v) for k, v in out.items()})
        return out

    # ---------------------------------------------------------------- tokenise + images

    def __call__(self, images=None, text=None, padding=False, return_tensors=None, **kwargs):
        """Tokenise ``text`` (already laid out) and turn ``images`` (per prompt: a list of PIL images
        or uint8 arrays, or None) into ``pixel_values`` [N_img, 3, H, W]."""
        if text is None:
            raise ValueError("LatentProcessor needs text")
        texts = [text] if isinstance(text, str) else list(text)
        enc = self.tokenizer(texts, add_special_tokens=False, padding=padding, return_tensors=return_tensors)
        data = dict(enc)
        if images is not None:
            from .vision import images_to_pixel_values

            flat = []
            for per_prompt in images:
                if per_prompt is None:
                    continue
                flat.extend(per_prompt if isinstance(per_prompt, (list, tuple)) else [per_prompt])
            flat = [im for im in flat if im is not None]
            if flat:
                pv = images_to_pixel_values(flat)  # [N_img, 3, H, W]
                if self.image_size and pv.shape[-1] != self.image_size:
                    raise ValueError(f"images are {pv.shape[-1]} px wide; latent_image_size={self.image_size}")
                data["pixel_values"] = pv
        return BatchFeature(data, tensor_type=return_tensors if return_tensors else None)

    def save_pretrained(self, save_directory, **kwargs):
        """The tokenizer (with the placeholder tokens) and the layout settings."""
        import json
        from pathlib import Path

        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        (path / "latent_processor.json").write_text(json.dumps(
            {"num_latents": self.num_latents, "num_image_tokens": self.num_image_tokens, "image_size": self.image_size}))
        return [str(path / "latent_processor.json")]

    @classmethod
    def from_saved(cls, save_directory) -> "LatentProcessor":
        import json
        from pathlib import Path

        from transformers import AutoTokenizer

        path = Path(save_directory)
        settings = json.loads((path / "latent_processor.json").read_text())
        return cls(AutoTokenizer.from_pretrained(str(path)), **settings)


def conversation_with_images(prompt, images) -> list[dict]:
    """A copy of a conversational ``prompt`` whose ``{"type": "image"}`` parts hold ``images`` in
    order (what TRL does with a dataset's ``image``/``images`` column)."""
    images = list(images if isinstance(images, (list, tuple)) else [images])
    out = []
    for m in prompt:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                part = {k: v for k, v in part.items() if v is not None}
                if part.get("type") == "image" and "image" not in part:
                    if not images:
                        raise ValueError("the prompt has more image parts than images")
                    part["image"] = images.pop(0)
                parts.append(part)
            content = parts
        out.append({**m, "content": content})
    return out
