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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONTEXT = 8192
SEED = 13
Weights = Callable[[np.random.Generator, tuple[int, ...]], Any]


@dataclass(frozen=True)
class Shape:
    label: str
    embed: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int


TINY = Shape("2 layers, width 64", embed=64, layers=2, heads=4, kv_heads=2, ffn=128)


def _tiny_weights(rng: np.random.Generator, dims: tuple[int, ...]) -> Any:
    return (rng.standard_normal(dims) * 0.05).astype(np.float32)


def write_tiny_gguf(out: Path, tokenizer_from: Path, gguf_py: Path) -> Path:
    """Write the model to `out` (kept when it is there already) and return its path."""
    return write_llama_gguf(out, TINY, tokenizer_from, gguf_py, _tiny_weights, "waystation-bench-tiny")


def write_llama_gguf(
    out: Path, shape: Shape, tokenizer_from: Path, gguf_py: Path, weights: Weights, name: str
) -> Path:
    """A llama-architecture GGUF of `shape`, random `weights(rng, dims)` (norms all ones), and
    the tokenizer and chat template of `tokenizer_from`; kept when it is there already. The
    embedding (f16) doubles as the output layer, as in SmolLM2: most of the weights by far."""
    if out.exists():
        return out
    sys.path.insert(0, str(gguf_py))
    import gguf  # type: ignore[import-not-found, import-untyped, unused-ignore]

    reader = gguf.GGUFReader(tokenizer_from)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    embed, ffn = shape.embed, shape.ffn
    head_dim = embed // shape.heads
    kv = shape.kv_heads * head_dim
    rng = np.random.default_rng(SEED)

    def random(*dims: int) -> Any:
        return weights(rng, dims)

    def ones(n: int) -> Any:
        return np.ones(n, dtype=np.float32)

    tmp = out.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_name(name)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(embed)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    writer.add_tensor("token_embd.weight", random(vocab, embed).astype(np.float16))
    writer.add_tensor("output_norm.weight", ones(embed))
    for i in range(shape.layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones(embed))
        writer.add_tensor(f"blk.{i}.attn_q.weight", random(embed, embed))
        writer.add_tensor(f"blk.{i}.attn_k.weight", random(kv, embed))
        writer.add_tensor(f"blk.{i}.attn_v.weight", random(kv, embed))
        writer.add_tensor(f"blk.{i}.attn_output.weight", random(embed, embed))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones(embed))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", random(ffn, embed))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", random(ffn, embed))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", random(embed, ffn))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(out)
    return out


if __name__ == "__main__":  # python bench/_tiny_gguf.py OUT.gguf TOKENIZER.gguf GGUF_PY_DIR
    print(write_tiny_gguf(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
