"""Write a tiny random-weight llama model in GGUF, for the real-server tests (no download).

``python -m tests.tiny_gguf OUT.gguf`` or :func:`write_model`. The model is a
two-layer llama, 64 wide, with a SentencePiece-style vocabulary of about 900
tokens: the control tokens, the 256 byte tokens (so any text can be
tokenized), and some English words with every prefix of each (see
:func:`vocabulary`). Its answers are random words, but two things are made
certain, so that tests do not depend on chance:

- it never ends an answer by itself, and answers in whole words only: one
  dimension of the residual stream holds a constant (the embeddings set it,
  no layer writes to it), and the output row of every other token weighs
  that dimension strongly negative. An answer ends at ``max_tokens``
  (``finish_reason: "length"``) or when the context is full;
- the same seed writes the same file.

The chat template is a plain ``role: content`` one that ignores tools.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

N_EMBD = 64
N_HEAD = 4
N_FF = 128
N_LAYER = 2
N_CTX_TRAIN = 4096
WORDS = (
    "the a an and of to in is it that was for on are with as his they be at one have this from or had by "
    "hot word but what some we can out other were all there when up use your how said each she which do "
    "their time if will way about many then them write would like so these her long make thing see him "
    "two has look more day could go come did number sound no most people my over know water than call "
    "you helpful assistant tool gives reliable answer arithmetic current date files uploaded user system "
    "tell me turn talk hello again still here just now first last next why who where new old good brief"
).split()
CAPITALISED = ("You", "When", "What", "The", "It", "I", "Be")
PUNCTUATION = ("(", ")", "?", ":", "!", "+", "=", ".", ",", "'", '"', "-", *"0123456789")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def vocabulary() -> tuple[list[str], list[float], list[int], set[int]]:
    """Tokens, scores, types, and the ids the model may generate (the whole words).

    llama.cpp's SentencePiece tokenizer joins two pieces only when the joined
    text is a token, so every prefix of a word is one too ("▁h", "▁ho",
    "▁hot"): then English text tokenizes at about 4 characters a token, as
    with a real model, and character budgets mean what they would on a real
    server.
    """
    kind = gguf.TokenType
    tokens = ["<unk>", "<s>", "</s>"]
    types = [kind.UNKNOWN, kind.CONTROL, kind.CONTROL]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        types.append(kind.BYTE)
    words = ["\u2581" + w for w in (*WORDS, *CAPITALISED)]
    pieces: list[str] = []
    seen: set[str] = set()

    def add(piece: str) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append(piece)

    for word in words:
        for end in range(2, len(word) + 1):
            add(word[:end])
    for piece in ("\u2581", *"abcdefghijklmnopqrstuvwxyz", *PUNCTUATION, *("\u2581" + p for p in PUNCTUATION)):
        add(piece)
    whole = set(words)
    generated = {len(tokens) + i for i, p in enumerate(pieces) if p in whole}
    tokens += pieces
    types += [kind.NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types], generated


def write_model(path: str | Path, seed: int = 7) -> Path:
    path = Path(path)
    rng = np.random.default_rng(seed)
    tokens, scores, types, generated = vocabulary()
    n_vocab = len(tokens)

    def rand(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("navi-tiny-random")
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    embd = rand(n_vocab, N_EMBD, scale=0.02)
    embd[:, 0] = 1.0  # the constant dimension
    w.add_tensor("token_embd.weight", embd)
    for i in range(N_LAYER):
        for name, shape in (("attn_q", (N_EMBD, N_EMBD)), ("attn_k", (N_EMBD, N_EMBD)),
                            ("attn_v", (N_EMBD, N_EMBD)), ("attn_output", (N_EMBD, N_EMBD)),
                            ("ffn_gate", (N_FF, N_EMBD)), ("ffn_up", (N_FF, N_EMBD)),
                            ("ffn_down", (N_EMBD, N_FF))):
            weight = rand(*shape)
            if name in ("attn_output", "ffn_down"):
                weight[0, :] = 0.0  # no layer writes to the constant dimension
            w.add_tensor(f"blk.{i}.{name}.weight", weight)
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out = rand(n_vocab, N_EMBD, scale=0.5)
    # Only whole words are generated: for every other token (<unk>, <s>, </s>, the bytes, prefixes,
    # punctuation) the constant dimension outweighs the rest.
    out[:, 0] = [0.0 if i in generated else -100.0 for i in range(n_vocab)]
    w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    print(write_model(sys.argv[1] if len(sys.argv) > 1 else "tiny.gguf"))
