"""Vision-language policies: every credit pass sees every model input TRL gives the policy (#20).

The pass before cbd40e2 forwarded only ``pixel_values[r]``, one image per row: LLaVA-Next failed
(no ``image_sizes``), LLaVA with two images per prompt failed ("Image features and image tokens do
not match"), Qwen2-VL (patch rows, ``image_grid_thw``) could not be sliced by row, and
``high_entropy`` read the entropies of a forward without the image.

Tiny LLaVA, LLaVA-Next and Qwen2-VL policies and their processors are built in code (a byte
tokenizer with the image tokens added, the PIL image processors: no hub, no torchvision). The
stock ``Qwen2VLProcessor`` cannot be built without torchvision: its ``video_processor`` slot is
checked against ``BaseVideoProcessor``, which is a torchvision-only placeholder, even when None
is passed. ``_ImageOnlyQwen2VLProcessor`` drops that slot; images go through the real
``Qwen2VLProcessor`` code. The dataset is TRL's conversational image format: ``{"type": "image"}``
parts in the prompt and an ``image`` (one per prompt) or ``images`` (a list) column of PIL images,
as in TRL's own tests (``trl-internal-testing/zen-image`` / ``zen-multi-image``).

The layout is TRL's default with micro-batches: 2 prompts × 2 generations per generation batch,
``per_device_train_batch_size`` 2 and ``steps_per_generation`` 2, so TRL shuffles the batch and
slices every multimodal input per micro-batch in the loss forward (the fused statistics path),
and the extra pass (``_early_exit_stats``) chunks it by 2 as well.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from datasets import Dataset
from PIL import Image

from rlattn.config import AttnCreditConfig
from rlattn.credit import compute_attention_stats
from rlattn.testing import byte_tokenizer, digit_reward
from rlattn.trainer import AttnCreditGRPOTrainer

MM_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}@IMAGE@"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ATOL = 1e-5
# what TRL hands the model's forward (num_images / num_tiles are TRL's own bookkeeping)
NOT_FORWARD = ("num_images", "num_tiles")
PIXEL_KEYS = ("pixel_values", "image_grid_thw", "image_sizes", "pixel_attention_mask")


def _tokenizer(image_tokens):
    tok = byte_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", *image_tokens]})
    return tok


def _text_config(tok, **kw):
    return dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, **kw)


def _finish(model_cls, config, tok, seed):
    config._attn_implementation = "eager"
    saved = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = model_cls(config)
    finally:
        torch.random.set_rng_state(saved)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def _clip_vision():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                            patch_size=8, projection_dim=16)


def build_llava(seed=0):
    """LLaVA: CLIP tower (16×16 images, 8×8 patches: 4 image tokens), Llama text model; CLIPImageProcessorPil."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = _tokenizer(["<image>"])
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=MM_TEMPLATE.replace("@IMAGE@", "<image>"))
    config = LlavaConfig(vision_config=_clip_vision(), text_config=LlamaConfig(**_text_config(tok)),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    return _finish(LlavaForConditionalGeneration, config, tok, seed), processor


def build_llava_next(seed=0):
    """LLaVA-Next: anyres tiling (``image_sizes`` decides each image's token count), LlavaNextImageProcessorPil."""
    from transformers import LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = _tokenizer(["<image>"])
    pinpoints = [[16, 32], [32, 16], [32, 32]]
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16},
                                                   image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=MM_TEMPLATE.replace("@IMAGE@", "<image>"))
    config = LlavaNextConfig(vision_config=_clip_vision(), text_config=LlamaConfig(**_text_config(tok)),
                             image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
                             vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints)
    return _finish(LlavaNextForConditionalGeneration, config, tok, seed), processor


def _image_only_qwen2_vl_processor_class():
    from transformers import Qwen2VLProcessor

    class _ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2VLProcessor without its video slot (see the module docstring)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return _ImageOnlyQwen2VLProcessor


def build_qwen2_vl(seed=0):
    """Qwen2-VL: flattened patch rows + ``image_grid_thw``, M-RoPE, ``mm_token_type_ids``; Qwen2VLImageProcessorPil."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
    tok = _tokenizer(specials)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    processor = _image_only_qwen2_vl_processor_class()(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=16 * 16, max_pixels=32 * 32, patch_size=8, merge_size=2,
                                                 temporal_patch_size=2),
        tokenizer=tok, chat_template=MM_TEMPLATE.replace("@IMAGE@", "<|vision_start|><|image_pad|><|vision_end|>"))
    config = Qwen2VLConfig(
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=8, spatial_merge_size=2,
                           temporal_patch_size=2, mlp_ratio=2),
        text_config=_text_config(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                        "rope_theta": 10000.0}),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    return _finish(Qwen2VLForConditionalGeneration, config, tok, seed), processor


BUILDERS = {"llava": build_llava, "llava_next": build_llava_next, "qwen2_vl": build_qwen2_vl}


def _images(n, sizes=((16, 16),), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        out.append(Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()))
    return out


def image_dataset(n=4, images_per_prompt=1, sizes=((16, 16),)):
    """TRL's conversational image format: an ``image`` column for one image per prompt, ``images`` for several."""
    pics = _images(n * images_per_prompt, sizes)
    rows = []
    for i in range(n):
        content = [{"type": "image"}] * images_per_prompt + [{"type": "text", "text": f"How many dots, {i}?"}]
        row = {"prompt": [{"role": "user", "content": content}], "solution": str(i)}
        mine = pics[i * images_per_prompt : (i + 1) * images_per_prompt]
        row.update({"image": mine[0]} if images_per_prompt == 1 else {"images": mine})
        rows.append(row)
    return Dataset.from_list(rows)


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, steps_per_generation=2, gradient_accumulation_steps=2,
                num_generations=2, max_completion_length=12, max_steps=2, learning_rate=1e-3, logging_steps=1,
                save_strategy="no", report_to="none", bf16=False, seed=0, beta=0.0, temperature=1.0, use_cpu=True,
                dataloader_num_workers=0, attn_fai_horizon=[2, 8], attn_window=4, credit_log_samples=0)
    base.update(kw)
    return AttnCreditConfig(**base)


def _snapshot(output):
    return {k: (v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)) for k, v in output.items()}


def _forward_inputs(batch, drop_pixels=False):
    from rlattn.trainer import MODEL_INPUT_KEYS

    keep = [k for k in MODEL_INPUT_KEYS if k not in NOT_FORWARD and not (drop_pixels and k in PIXEL_KEYS)]
    return {k: batch[k] for k in keep if batch.get(k) is not None}


def _sequences(batch):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)  # [B, P+T]
    am = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)  # [B, P+T]
    resp = torch.cat([torch.zeros_like(batch["prompt_mask"]), batch["completion_mask"]], 1).bool()  # [B, P+T]
    return ids, am, resp


def _spy_generation(trainer, on_batch):
    """Call ``on_batch(snapshot)`` on every generation batch, right after TRL made it: the weights then are
    the rollout weights that the fused loss forwards of that batch see (no optimizer step in between)."""
    original = trainer._generate_and_score_completions
    records = []

    def spy(inputs):
        output = original(inputs)
        snap = _snapshot(output)
        records.append((snap, on_batch(snap)))
        return output

    trainer._generate_and_score_completions = spy
    return records


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _build_trainer(tmp_path, arch, images_per_prompt, sizes, **kw):
    model, processor = BUILDERS[arch](seed=0)
    args = make_args(tmp_path, **kw)
    return AttnCreditGRPOTrainer(model=model, reward_funcs=[digit_reward], args=args,
                                 train_dataset=image_dataset(4, images_per_prompt, sizes), processing_class=processor)


CASES = [
    pytest.param("llava", 2, ((16, 16),), id="llava-2-images"),
    pytest.param("llava_next", 1, ((16, 16), (24, 16)), id="llava_next-anyres"),
    pytest.param("qwen2_vl", 2, ((16, 16), (32, 16)), id="qwen2_vl-2-images-2-sizes"),
]


@pytest.mark.parametrize("arch, images_per_prompt, sizes", CASES)
def test_coupled_statistics_see_every_model_input(tmp_path, arch, images_per_prompt, sizes):
    trainer = _build_trainer(tmp_path, arch, images_per_prompt, sizes, credit_strategy="coupled")
    cfg = trainer.stats_config

    def references(batch):
        ids, am, resp = _sequences(batch)
        direct = compute_attention_stats(trainer.model, ids, am, resp, cfg, **_forward_inputs(batch))
        no_image = compute_attention_stats(trainer.model, ids, am, resp, cfg, **_forward_inputs(batch, drop_pixels=True))
        extra = trainer._early_exit_stats(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                          batch["completion_mask"], model_inputs=batch)  # TRL's chunked forward, by 2
        return direct, no_image, extra

    records = _spy_generation(trainer, references)
    trainer.train()

    losses = _losses(trainer)
    assert len(losses) == 2 and all(math.isfinite(l) for l in losses)
    assert len(records) == 2
    batch, (direct, no_image, (extra_waad, extra_fai)) = records[-1]
    assert batch.get("pixel_values") is not None
    if images_per_prompt > 1:
        assert batch["num_images"] == [images_per_prompt] * len(batch["num_images"])
    credit = trainer.last_credit  # the fused path's γ, WAAD, FAI from the loss forwards, in generation order
    P = batch["prompt_ids"].size(1)
    mask = credit["mask"]
    assert torch.equal(mask, batch["completion_mask"].bool())
    torch.testing.assert_close(credit["waad"][mask], direct.waad[:, P:][mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(credit["fai"], direct.fai[:, P:], atol=ATOL, rtol=0, equal_nan=True)
    torch.testing.assert_close(extra_waad[:, P:][mask], direct.waad[:, P:][mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(extra_fai[:, P:], direct.fai[:, P:], atol=ATOL, rtol=0, equal_nan=True)
    gamma = trainer.credit_fn(waad=direct.waad[:, P:], fai=direct.fai[:, P:], mask=mask, entropies=None,
                              config=trainer.credit_config)
    torch.testing.assert_close(credit["gamma"][mask], gamma[mask], atol=0, rtol=0)
    assert (credit["gamma"][mask] > 1).any()
    # the images matter: a pass without them gives other statistics
    assert (direct.waad[:, P:][mask] - no_image.waad[:, P:][mask]).abs().max() > 1e-4
    assert credit["path"] == "fused"


@pytest.mark.parametrize("num_iterations, path", [(1, "fused"), (2, "piggyback")])
def test_high_entropy_reads_the_entropies_of_the_forward_with_the_image(tmp_path, num_iterations, path):
    from trl import GRPOTrainer

    trainer = _build_trainer(tmp_path, "llava", 2, ((16, 16),), credit_strategy="high_entropy", num_iterations=num_iterations,
                             max_steps=1)

    def entropies(batch):
        ids, am, _ = _sequences(batch)
        T = batch["completion_ids"].size(1)
        with torch.no_grad():
            mm = {k: batch[k] for k in ("pixel_values", "num_images") if batch.get(k) is not None}
            _, with_image, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, am, T, batch_size=2,
                                                                             compute_entropy=True, **mm)
            _, without, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, am, T, batch_size=2,
                                                                          compute_entropy=True)
        return with_image, without

    records = _spy_generation(trainer, entropies)
    trainer.train()

    batch, (with_image, without) = records[-1]
    mask = trainer.last_credit["mask"]
    assert (with_image[mask] - without[mask]).abs().max() > 1e-4  # the image changes the entropies

    def pick(ent):  # high_entropy's γ from the given entropies
        return trainer.credit_fn(waad=torch.zeros(mask.shape), fai=torch.full(mask.shape, float("nan")), mask=mask,
                                 entropies=ent.float(), config=trainer.credit_config)

    gamma_with, gamma_without = pick(with_image), pick(without)
    assert not torch.equal(gamma_with[mask], gamma_without[mask])  # so γ tells which entropies were read
    assert torch.equal(trainer.last_credit["gamma"][mask], gamma_with[mask])
    assert all(math.isfinite(l) for l in _losses(trainer))
    assert trainer.last_credit["path"] == path


def test_the_construction_check_knows_a_vlm_prompt_length(tmp_path):
    # LLaVA-Next: the image's size decides its number of image tokens
    trainer = _build_trainer(tmp_path, "llava_next", 1, ((16, 16), (24, 16)), credit_strategy="coupled")
    out = trainer._generate_and_score_completions([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    longest = int(out["prompt_mask"].sum(1).max())  # the prompts as TRL tokenized them, image tokens included
    assert trainer._max_sequence_length() == longest + trainer.args.max_completion_length
