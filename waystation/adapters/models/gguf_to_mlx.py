"""Turn a llama-architecture GGUF into an MLX model directory that `mlx_lm.load` reads.

MLX reads Q4_0, Q4_1 and Q8_0 GGUF tensors directly as its own affine-quantized arrays (group size
32, scales and biases), so no weight is dequantized or requantized: the tensors are renamed to
mlx-lm's llama names and saved as safetensors. GGUF stores Q and K in the interleaved rope layout,
hence `rope_traditional`. The tokenizer is rebuilt from the GGUF's vocab and merges with
`tokenizers` (transformers' own GGUF path needs torch), and the chat template travels along.

    python -m waystation.adapters.models.gguf_to_mlx MODEL.gguf OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from waystation import durable
from waystation.errors import ModelError

GROUP_SIZE = 32  # every GGUF block type MLX keeps quantized has 32 weights per block
DEFAULT_BITS = 4

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases|bias)")
_TOP = re.compile(r"(\w+)\.(weight|scales|biases|bias)")

# Tokens llama.cpp also treats as end of generation when the vocab has them.
_END_OF_TURN = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end|>",
    "<EOT>",
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def mlx_tensor_name(gguf_name: str) -> str | None:
    """mlx-lm's llama name for a GGUF tensor, or None for one the model has no place for."""
    if m := _BLOCK.fullmatch(gguf_name):
        layer, part, kind = m.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{kind}"
        return None
    if (m := _TOP.fullmatch(gguf_name)) and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    return None


def convert_gguf_to_mlx(gguf_path: Path, out_dir: Path) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and tokenizer_config.json to
    `out_dir` (created if needed) and return it. Raises ModelError when the file cannot be used."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ModelError(gguf_path, "no such GGUF file")
    try:
        import mlx.core as mx  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise ModelError(gguf_path, 'converting to MLX needs mlx: pip install "mlx[cpu]" mlx-lm') from exc
    try:
        loaded: Any = mx.load(str(gguf_path), return_metadata=True)
        tensors, meta = loaded
    except (RuntimeError, ValueError) as exc:  # mlx raises these for a file that is not GGUF
        raise ModelError(gguf_path, f"not a readable GGUF file ({type(exc).__name__})") from exc

    arch = _text(meta, "general.architecture")
    if arch != "llama":
        raise ModelError(gguf_path, f"architecture {arch!r} is not supported; only llama GGUFs convert")
    weights: dict[str, Any] = {}
    for name, array in tensors.items():
        target = mlx_tensor_name(name)
        if target is None:
            raise ModelError(gguf_path, f"tensor {name!r} has no place in an mlx-lm llama model")
        weights[target] = array
    config = model_config(meta, weights)
    tokenizer_json, tokenizer_config = tokenizer_files(meta)

    def save_weights(path: Path) -> None:
        mx.save_safetensors(str(path), weights, metadata={"format": "mlx"})

    tokenizers = {"tokenizer.json": tokenizer_json, "tokenizer_config.json": _json(tokenizer_config)}
    _write_model_dir(out_dir, save_weights, tokenizers, _json(config))
    return out_dir


def _write_model_dir(
    out_dir: Path, save_weights: Callable[[Path], None], files: dict[str, str], config: str
) -> None:
    """The directory's files, each whole or not there after a crash or a power cut, config.json
    (what makes it a model directory, mlx.is_mlx_model_dir) removed first and written last: a
    conversion cut short leaves a directory refused as no model, never one whose config and
    weights come from different conversions."""
    durable.make_dirs(out_dir)
    (out_dir / "config.json").unlink(missing_ok=True)
    durable.fsync_dir(out_dir)
    partial = out_dir / ".partial-weights.safetensors"  # (not model*.safetensors: not a model yet)
    try:
        save_weights(partial)
        with partial.open("rb") as written:
            os.fsync(written.fileno())
        durable.move_into(partial, out_dir / "model.safetensors")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    for name, text in files.items():
        durable.write_atomic(out_dir / name, text, mode=0o644)
    durable.write_atomic(out_dir / "config.json", config, mode=0o644)


def model_config(meta: dict[str, Any], weights: dict[str, Any]) -> dict[str, Any]:
    """mlx-lm's llama config.json from the GGUF metadata (and the tensors' quantization)."""
    hidden = _int(meta, "llama.embedding_length")
    heads = _int(meta, "llama.attention.head_count")
    vocab = _int(meta, "llama.vocab_size", len(meta["tokenizer.ggml.tokens"]))
    context = _int(meta, "llama.context_length", 2048)
    config: dict[str, Any] = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": _int(meta, "llama.block_count"),
        "intermediate_size": _int(meta, "llama.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": _int(meta, "llama.attention.head_count_kv", heads),
        "head_dim": _int(meta, "llama.attention.key_length", hidden // heads),
        "rms_norm_eps": _float(meta, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        "vocab_size": vocab,
        "max_position_embeddings": context,
        "rope_theta": _float(meta, "llama.rope.freq_base", 10000.0),
        "rope_traditional": True,
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "bos_token_id": _int(meta, "tokenizer.ggml.bos_token_id", 1),
        "eos_token_id": end_token_ids(meta),
    }
    scaling = _text(meta, "llama.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": _float(meta, "llama.rope.scaling.factor")}
    elif scaling != "none":
        raise ModelError(meta.get("general.name", "gguf"), f"rope scaling {scaling!r} is not supported")
    quantization = quantization_config(weights)
    if quantization is not None:
        config["quantization"] = quantization
        config["quantization_config"] = quantization
    return config


def quantization_config(weights: dict[str, Any]) -> dict[str, Any] | None:
    """{"group_size": 32, "bits": 4} plus an entry for each layer packed with other bits (Q8_0);
    layers without scales (f16/f32 in the GGUF) stay unquantized."""
    layers = {}
    for name, scales in weights.items():
        if name.endswith(".scales"):
            layer = name.removesuffix(".scales")
            in_features = scales.shape[-1] * GROUP_SIZE
            layers[layer] = weights[f"{layer}.weight"].shape[-1] * 32 // in_features
    if not layers:
        return None
    config: dict[str, Any] = {"group_size": GROUP_SIZE, "bits": DEFAULT_BITS}
    for layer, bits in sorted(layers.items()):
        if bits != DEFAULT_BITS:
            config[layer] = {"group_size": GROUP_SIZE, "bits": bits}
    return config


def end_token_ids(meta: dict[str, Any]) -> list[int]:
    """The eos token and the end-of-turn tokens llama.cpp also stops on, eos first."""
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    ids = [_int(meta, "tokenizer.ggml.eos_token_id", 2)]
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        if key in meta:
            ids.append(_int(meta, key))
    index = {text: i for i, text in enumerate(tokens) if text in _END_OF_TURN}
    ids.extend(index[text] for text in _END_OF_TURN if text in index)
    return list(dict.fromkeys(ids))


def tokenizer_files(meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(tokenizer.json text, tokenizer_config.json dict) for a byte-level BPE ("gpt2") vocab."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = _text(meta, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ModelError(
            meta.get("general.name", "gguf"), f"tokenizer {kind!r} is not supported (only gpt2 BPE)"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    token_types = _list(meta.get("tokenizer.ggml.token_type"), len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {text: i for i, text in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))

    pre = _text(meta, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("smollm", "starcoder", "refact", "codeshell", "exaone", "minerva", "command-r"):
        # llama.cpp splits every digit apart first, then applies the GPT-2 pattern
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in ("llama3", "llama-bpe", "llama-v3", "smaug-bpe"):
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )
    elif pre in ("default", "gpt-2", "gpt2"):
        tokenizer.pre_tokenizer = byte_level
    else:
        raise ModelError(meta.get("general.name", "gguf"), f"pre-tokenizer {pre!r} is not supported")
    tokenizer.decoder = decoders.ByteLevel()

    # GGUF token types: 3 control, 4 user-defined; both are matched whole, never split by BPE
    specials = [
        AddedToken(tokens[i], special=(t == 3), normalized=False)
        for i, t in enumerate(token_types)
        if t in (3, 4)
    ]
    tokenizer.add_tokens(specials)

    bos = tokens[_int(meta, "tokenizer.ggml.bos_token_id", 1)]
    eos = tokens[_int(meta, "tokenizer.ggml.eos_token_id", 2)]
    add_bos = bool(_scalar(meta.get("tokenizer.ggml.add_bos_token", False)))
    if add_bos:
        bos_id = vocab[bos]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _int(meta, "llama.context_length", 2048),
    }
    for key, field in (
        ("tokenizer.ggml.unknown_token_id", "unk_token"),
        ("tokenizer.ggml.padding_token_id", "pad_token"),
    ):
        if key in meta:
            config[field] = tokens[_int(meta, key)]
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = _text(meta, "tokenizer.chat_template")
    return tokenizer.to_str(), config


def _scalar(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _list(value: Any, length: int) -> list[int]:
    if value is None:
        return [1] * length
    return [int(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]


def _int(meta: dict[str, Any], key: str, default: int | None = None) -> int:
    if key not in meta:
        if default is None:
            raise ModelError(meta.get("general.name", "gguf"), f"GGUF metadata lacks {key}")
        return default
    return int(_scalar(meta[key]))


def _float(meta: dict[str, Any], key: str, default: float | None = None) -> float:
    if key not in meta:
        if default is None:
            raise ModelError(meta.get("general.name", "gguf"), f"GGUF metadata lacks {key}")
        return default
    return float(f"{float(_scalar(meta[key])):.7g}")  # GGUF keeps float32: drop the noise digits


def _text(meta: dict[str, Any], key: str, default: str | None = None) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str):
        raise ModelError(meta.get("general.name", "gguf"), f"GGUF metadata lacks {key}")
    return value


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m waystation.adapters.models.gguf_to_mlx",
        description=(
            "Convert a llama-architecture GGUF into an MLX model directory "
            "(Q4_0, Q4_1 and Q8_0 tensors stay quantized)."
        ),
    )
    parser.add_argument("gguf", type=Path, help="the .gguf file")
    parser.add_argument("out", type=Path, help="the directory to write (created if needed)")
    args = parser.parse_args(argv)
    try:
        out = convert_gguf_to_mlx(args.gguf, args.out)
    except ModelError as exc:
        sys.stderr.write(f"error: {exc.message}\n")
        return 1
    sys.stdout.write(f"{out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
