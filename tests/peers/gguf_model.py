"""A tiny llama-architecture GGUF, written with the `gguf` package, for the real llama.cpp tier.

The weights are not trained, but they are not noise either: every attention and feed-forward
output projection is zero, so the residual stream at a position is just the embedding of its
token, and the next token depends only on the last one. Embeddings are one-hot, and the output
matrix maps a few "trigger" tokens to a fixed chain of tokens, everything else to end-of-turn.
That makes the answer deterministic (the logits are 32 apart) and the chain is chosen per model:
"ok", or a Hermes-style tool call written as text, which llama-cpp-python's Jinja chat handler
returns as plain content — the "server did not parse the call" case nex must recover from.

The vocabulary is byte-level (GPT-2's byte-to-unicode mapping, 256 byte tokens), plus ChatML's
control tokens and the multi-byte tokens of the chains. The chat template lives in
`tokenizer.chat_template`, which llama-cpp-python renders with jinja2:

- STRICT_TEMPLATE raises, like Mistral's and Llama 2's templates, unless roles alternate
  user/assistant after an optional system message (so a tool message is an error too);
- TOOLS_TEMPLATE renders the tools, assistant tool calls and tool results (Hermes/Qwen style),
  and ends the generation prompt with a space instead of a newline after a tool result, so the
  one-token memory of the model can answer a result with "ok" instead of another call.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

N_EMBD = 64
N_HEAD = 4
N_FF = 128
N_LAYER = 2
LOGIT = 4.0  # times the RMS-normed one-hot (8.0): a 32-logit lead over every other token

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

STRICT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}"
    "<|im_start|>system{{ '\\n' }}{{ messages[0]['content'] }}<|im_end|>{{ '\\n' }}"
    "{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}{{ '\\n' }}{{ message['content'] or '' }}<|im_end|>"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)

TOOLS_TEMPLATE = (
    "<|im_start|>system{{ '\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% endif %}"
    "{% if tools %}{{ '\\n\\n' }}# Tools{{ '\\n' }}<tools>"
    "{% for tool in tools %}{{ '\\n' }}{{ tool | tojson }}{% endfor %}"
    "{{ '\\n' }}</tools>"
    "{% endif %}<|im_end|>{{ '\\n' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "<|im_start|>user{{ '\\n' }}{{ message['content'] }}<|im_end|>{{ '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "<|im_start|>assistant{{ '\\n' }}{{ message['content'] or '' }}"
    "{% for call in message['tool_calls'] or [] %}"
    "<tool_call>{{ '\\n' }}"
    '{"name": "{{ call["function"]["name"] }}", "arguments": {{ call["function"]["arguments"] }}}'
    "{{ '\\n' }}</tool_call>"
    "{% endfor %}<|im_end|>{{ '\\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "<|im_start|>user{{ '\\n' }}<tool_response>{{ '\\n' }}{{ message['content'] }}{{ '\\n' }}"
    "</tool_response><|im_end|>{{ '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant"
    "{% if messages[-1]['role'] == 'tool' %} {% else %}{{ '\\n' }}{% endif %}"
    "{% endif %}"
)

# trigger (the last token of a generation prompt) -> the tokens the model answers with
OK_CHAIN = {"\n": ["o", "k"]}
# llama-cpp-python detokenizes into a 32-byte buffer per token, so no token may be longer.
TOOL_CHAINS = {
    "\n": [
        "<tool_call>",
        '\n{"name": "bash", ',
        '"arguments": {"command": ',
        '"echo llama-ok"}}\n',
        "</tool_call>",
    ],
    " ": ["o", "k"],
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what a byte-level BPE vocab holds)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


BYTE_CHAR = _bytes_to_unicode()


def _piece(text: str) -> str:
    """`text` as a byte-level vocab entry."""
    return "".join(BYTE_CHAR[b] for b in text.encode("utf-8"))


def write_model(
    path: Path, *, template: str, chains: dict[str, list[str]], context_length: int = 32768
) -> Path:
    """Write the GGUF to `path`; the model answers each trigger with its chain, then stops."""
    import gguf

    tokens = [BYTE_CHAR[b] for b in range(256)]
    types = [gguf.TokenType.NORMAL] * 256
    for chain in chains.values():
        for text in chain:
            if len(text.encode("utf-8")) > 1 and _piece(text) not in tokens:
                tokens.append(_piece(text))
                types.append(gguf.TokenType.NORMAL)
    tokens.append(_piece("  "))  # the one merge's result: llama.cpp wants a merges list
    types.append(gguf.TokenType.NORMAL)
    for special in (ENDOFTEXT, IM_START, IM_END):
        tokens.append(special)
        types.append(gguf.TokenType.CONTROL)
    index = {t: i for i, t in enumerate(tokens)}
    eos = index[IM_END]
    n_vocab = len(tokens)

    # One embedding dimension per token that has a successor other than end-of-turn; every
    # other token shares the last dimension, whose successor is end-of-turn.
    successor: dict[int, int] = {}
    for trigger, chain in chains.items():
        ids = [index[_piece(trigger)], *(index[_piece(t)] for t in chain)]
        for current, following in itertools.pairwise(ids):
            successor[current] = following
    dims = {token: d for d, token in enumerate(successor)}
    other = N_EMBD - 1
    assert len(dims) < other, "too many chain tokens for the embedding width"

    embd = np.zeros((n_vocab, N_EMBD), dtype=np.float32)
    embd[:, other] = 1.0
    for token, d in dims.items():
        embd[token, :] = 0.0
        embd[token, d] = 1.0
    output = np.zeros((n_vocab, N_EMBD), dtype=np.float32)
    for token, following in successor.items():
        output[following, dims[token]] = LOGIT
    output[eos, other] = LOGIT

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("nexpy-tiny-test")
    writer.add_context_length(context_length)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{BYTE_CHAR[32]} {BYTE_CHAR[32]}"])
    writer.add_bos_token_id(index[ENDOFTEXT])
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(False)
    writer.add_chat_template(template)

    ones = np.ones(N_EMBD, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    for layer in range(N_LAYER):
        blk = f"blk.{layer}"
        square = np.zeros((N_EMBD, N_EMBD), dtype=np.float32)
        writer.add_tensor(f"{blk}.attn_norm.weight", ones)
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{blk}.{name}.weight", square)
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones)
        writer.add_tensor(f"{blk}.ffn_gate.weight", np.zeros((N_FF, N_EMBD), dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_up.weight", np.zeros((N_FF, N_EMBD), dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_down.weight", np.zeros((N_EMBD, N_FF), dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
