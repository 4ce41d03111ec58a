"""A tiny random-weight llama GGUF, for token rates where per-token overheads show.

Two layers of width 64 decode in well under a millisecond a token, so whatever a server adds per
token (a loop hop, SSE framing, JSON) is a visible share of it. The tokenizer and chat template are
the embedded SmolLM2's, so prompts tokenize and chat-format exactly as they do for it; the words it
says are noise, and with random weights the end-of-text token is as unlikely as any other.
Written with gguf-py, llama.cpp's own GGUF writer, taken from the sdist the llama-server baseline is
built from (`_llama_server.cache_dir() / "gguf-py"`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

EMBED = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FFN = 128
CONTEXT = 8192
SEED = 13


def write_tiny_gguf(out: Path, tokenizer_from: Path, gguf_py: Path) -> Path:
    """Write the model to `out` (kept when it is there already) and return its path."""
    if out.exists():
        return out
    sys.path.insert(0, str(gguf_py))
    import gguf  # type: ignore[import-not-found, import-untyped, unused-ignore]

    reader = gguf.GGUFReader(tokenizer_from)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    head_dim = EMBED // HEADS
    rng = np.random.default_rng(SEED)

    def weights(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    tmp = out.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name("waystation-bench-tiny")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBED)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, field in reader.fields.items():
        if name.startswith("tokenizer."):
            sub_type = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(name, field.contents(), field.types[0], sub_type)
    # The embedding doubles as the output layer (no output.weight): most of the weights by far.
    writer.add_tensor("token_embd.weight", weights(vocab, EMBED).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(EMBED, dtype=np.float32))
    for i in range(LAYERS):
        kv = KV_HEADS * head_dim
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(EMBED, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weights(EMBED, EMBED))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weights(kv, EMBED))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights(kv, EMBED))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights(EMBED, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(EMBED, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(FFN, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(FFN, EMBED))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(EMBED, FFN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(out)
    return out


if __name__ == "__main__":  # python bench/_tiny_gguf.py OUT.gguf TOKENIZER.gguf GGUF_PY_DIR
    print(write_tiny_gguf(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
