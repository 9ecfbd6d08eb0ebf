"""rlattn.testing: the in-code tokenizers of the tiny models."""

from rlattn.data.synthetic import QUADRANT_QUESTION, QUADRANTS
from rlattn.testing import byte_tokenizer, task_tokenizer, tiny_model


def test_task_tokenizer_makes_the_task_words_single_tokens():
    tok = task_tokenizer()
    assert tok.get_vocab() == task_tokenizer().get_vocab()  # trained in code, the same every time
    words = tok.convert_ids_to_tokens(tok(QUADRANT_QUESTION, add_special_tokens=False)["input_ids"])
    assert words[:5] == ["Where", "Ġis", "Ġthe", "Ġred", "Ġsquare"] and len(words) == 19
    for answer in (*QUADRANTS, "7"):
        assert len(tok(answer, add_special_tokens=False)["input_ids"]) == 1, answer
    bytes_len = len(byte_tokenizer()(QUADRANT_QUESTION, add_special_tokens=False)["input_ids"])
    assert bytes_len == len(QUADRANT_QUESTION) == 60  # what the byte tokenizer costs


def test_task_tokenizer_still_encodes_any_text_and_speaks_chatml():
    tok = task_tokenizer()
    text = "Zebra ünïcode 42 {}"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # byte fallback
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == tok.pad_token == "<|im_end|>" and tok.padding_side == "left"


def test_tiny_model_sizes_its_vocab_to_the_task_tokenizer():
    model, tok = tiny_model("llama", tokenizer="task", hidden_size=16, num_layers=1)
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id
