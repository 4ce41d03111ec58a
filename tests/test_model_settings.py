"""`[model]`'s llama.cpp settings: threads, gpu_layers, context, batch, flash_attention, mmap,
mlock. Checked when the config is read, handed to llama.cpp as its own keyword arguments, and
honoured: llama.cpp itself reports the thread count it runs with, in a test process and through a
real agent whose setting came from the environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from support.agentproc import started_agent

from waystation.adapters.models import cpu_threads, llama_options, open_backend
from waystation.adapters.models.cpu_cores import _linux_cores, physical_cores
from waystation.adapters.models.embedded import default_model_path
from waystation.adapters.models.llamacpp import LlamaCppBackend, LlamaOptions
from waystation.config import ModelSettings, Paths
from waystation.config_load import load_settings
from waystation.errors import ConfigError


def _settings(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None) -> ModelSettings:
    paths = Paths.resolve({"WAYSTATION_HOME": str(tmp_path)})
    if toml:
        paths.config_file.write_text(toml)
    return load_settings(paths, env or {}).model


def _error(tmp_path: Path, toml: str = "", env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _settings(tmp_path, toml, env)
    return info.value


# --- the settings ----------------------------------------------------------------------------


def test_defaults_are_the_contracts(tmp_path: Path) -> None:
    m = _settings(tmp_path)
    assert (m.threads, m.gpu_layers, m.context, m.batch) == (0, 0, 4096, 512)
    assert (m.flash_attention, m.mmap, m.mlock) == ("auto", True, False)
    assert (m.parallel, m.speculative, m.saved_state_mb) == (4, "auto", 1024)


def test_parallel_and_speculative_from_the_file_and_the_environment(tmp_path: Path) -> None:
    m = _settings(tmp_path, '[model]\nparallel = 0\nspeculative = "off"\n')
    assert (m.parallel, m.speculative) == (0, "off")
    (tmp_path / "other").mkdir()
    m = _settings(tmp_path / "other", env={"WAYSTATION_MODEL__PARALLEL": "8"})
    assert llama_options(m).parallel == 8 and llama_options(m).speculative == "auto"


def test_saved_state_mb_from_the_file_and_the_environment(tmp_path: Path) -> None:
    assert llama_options(_settings(tmp_path, "[model]\nsaved_state_mb = 0\n")).saved_state_mb == 0
    (tmp_path / "other").mkdir()
    m = _settings(tmp_path / "other", env={"WAYSTATION_MODEL__SAVED_STATE_MB": "64"})
    assert llama_options(m).saved_state_mb == 64


def test_the_file_sets_each_of_them(tmp_path: Path) -> None:
    toml = (
        "[model]\nthreads = 3\ngpu_layers = -1\ncontext = 8192\nbatch = 256\n"
        'flash_attention = "off"\nmmap = false\nmlock = true\n'
    )
    m = _settings(tmp_path, toml)
    assert (m.threads, m.gpu_layers, m.context, m.batch) == (3, -1, 8192, 256)
    assert (m.flash_attention, m.mmap, m.mlock) == ("off", False, True)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    env = {
        "WAYSTATION_MODEL__THREADS": "1",
        "WAYSTATION_MODEL__GPU_LAYERS": "12",
        "WAYSTATION_MODEL__CONTEXT": "2048",
        "WAYSTATION_MODEL__FLASH_ATTENTION": "on",
        "WAYSTATION_MODEL__MLOCK": "true",
    }
    m = _settings(tmp_path, "[model]\nthreads = 4\ncontext = 8192\n", env)
    assert (m.threads, m.gpu_layers, m.context, m.flash_attention, m.mlock) == (1, 12, 2048, "on", True)


@pytest.mark.parametrize(
    ("toml", "key", "words"),
    [
        ("threads = -1", "model.threads", "0 (one per physical core) to 512"),
        ("threads = 100000", "model.threads", "got 100000"),
        ("gpu_layers = -2", "model.gpu_layers", "-1 (all)"),
        ("context = 0", "model.context", "64 to"),
        ("context = -4096", "model.context", "64 to"),
        ("context = 1e9", "model.context", "expected int"),
        ("context = 4294967296", "model.context", "got 4294967296"),
        ("batch = 0", "model.batch", "1 to"),
        ('threads = "4"', "model.threads", "expected int"),
        ("threads = 2.5", "model.threads", "expected int"),
        ("mmap = 1", "model.mmap", "expected bool"),
        ('flash_attention = "yes"', "model.flash_attention", "auto, on, off"),
        ("n_gpu_layers = 10", "model.n_gpu_layers", "unknown key"),
        ("parallel = -1", "model.parallel", "0 (one at a time) to 256"),
        ("parallel = 1000", "model.parallel", "got 1000"),
        ('speculative = "on"', "model.speculative", "auto, off"),
        ("saved_state_mb = -1", "model.saved_state_mb", "0 (off) or more"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, toml: str, key: str, words: str) -> None:
    err = _error(tmp_path, f"[model]\n{toml}\n")
    assert err.key == key
    assert words in str(err)


def test_a_bad_environment_value_names_its_key(tmp_path: Path) -> None:
    err = _error(tmp_path, env={"WAYSTATION_MODEL__THREADS": "-3"})
    assert err.key == "model.threads"
    err = _error(tmp_path, env={"WAYSTATION_MODEL__THREADS": "many"})
    assert err.key == "model.threads" and "expected int" in str(err)


# --- physical cores ----------------------------------------------------------------------------


def _cpus(root: Path, masks: list[str]) -> Path:
    for n, mask in enumerate(masks):
        topology = root / f"cpu{n}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings").write_text(mask + "\n")
    return root


def test_hyperthread_siblings_count_once(tmp_path: Path) -> None:
    # 4 cores with 2 threads each: cpuN and cpuN+4 share a core, as Linux numbers them.
    masks = ["11", "22", "44", "88", "11", "22", "44", "88"]
    assert _linux_cores(_cpus(tmp_path, masks)) == 4


def test_cores_without_hyperthreads_each_count(tmp_path: Path) -> None:
    assert _linux_cores(_cpus(tmp_path, ["1", "2"])) == 2


def test_no_topology_is_unknown(tmp_path: Path) -> None:
    assert _linux_cores(tmp_path) is None


def test_physical_cores_of_this_machine_agree_with_the_kernel() -> None:
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    lists = Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list")
    if sys_lists := {p.read_text().strip() for p in lists}:
        assert cores == len(sys_lists)


# --- what llama.cpp is given ---------------------------------------------------------------------


def test_settings_become_llamas_arguments() -> None:
    settings = ModelSettings(threads=3, gpu_layers=-1, context=2048, batch=128, mmap=False, mlock=True)
    assert llama_options(settings).llama_kwargs() == {
        "n_ctx": 2048,
        "n_threads": 3,
        "n_threads_batch": 3,
        "n_gpu_layers": -1,
        "n_batch": 128,
        "flash_attn": True,  # auto: on, as llama.cpp's auto decides on CPU, CUDA and Metal
        "use_mmap": False,
        "use_mlock": True,
    }


@pytest.mark.parametrize(
    ("flash", "gpu_layers", "on"),
    [("auto", 0, True), ("auto", 10, True), ("on", 10, True), ("off", 0, False), ("off", 10, False)],
)
def test_flash_attention(flash: str, gpu_layers: int, on: bool) -> None:
    assert LlamaOptions(flash_attention=flash, gpu_layers=gpu_layers).llama_kwargs()["flash_attn"] is on


def test_zero_threads_is_one_per_physical_core() -> None:
    kwargs = LlamaOptions(threads=0).llama_kwargs()
    assert kwargs["n_threads"] == kwargs["n_threads_batch"] == physical_cores()


def test_open_backend_hands_the_settings_over() -> None:
    settings = ModelSettings(threads=1, context=1024, batch=64)
    backend = open_backend(default_model_path(), settings)
    assert isinstance(backend, LlamaCppBackend)
    assert backend.options == llama_options(settings)
    assert cpu_threads(backend, default_model_path(), settings) == 1


def test_mlx_has_no_cpu_threads(tmp_path: Path) -> None:
    assert cpu_threads(None, tmp_path, ModelSettings(backend="mlx", threads=4)) is None


# --- honoured: llama.cpp's own report ------------------------------------------------------------


def _reported(options: LlamaOptions) -> tuple[int, int, int]:
    """What llama.cpp says the loaded context runs with: threads, batch threads, context size."""
    import llama_cpp

    backend = LlamaCppBackend(str(default_model_path()), options=options)
    handle = backend.load_blocking()
    try:
        ctx: Any = handle.llm.ctx
        return (
            llama_cpp.llama_n_threads(ctx),
            llama_cpp.llama_n_threads_batch(ctx),
            llama_cpp.llama_n_ctx(ctx),
        )
    finally:
        backend.unload_blocking(handle)


def test_llama_cpp_runs_with_the_threads_set() -> None:
    assert _reported(LlamaOptions(threads=1, context=1024)) == (1, 1, 1024)


def test_llama_cpp_runs_with_one_thread_per_physical_core_by_default() -> None:
    cores = physical_cores()
    assert _reported(LlamaOptions()) == (cores, cores, 4096)


def test_an_agent_takes_threads_from_the_environment() -> None:
    """End to end: WAYSTATION_MODEL__THREADS=1 reaches llama.cpp in a real agent process, and
    `GET /v1/status` shows what llama.cpp reports once the model is loaded."""
    env = {"WAYSTATION_CONNECTIVITY__MODE": "offline", "WAYSTATION_MODEL__THREADS": "1"}
    with started_agent(env) as agent:
        model = agent.api("GET", "/v1/status").json()["model"]
        assert (model["loaded"], model["threads"]) == (False, 1)
        body = {"prompt": "Say hi.", "tool_choice": "none", "max_tokens": 4}
        answer = agent.api("POST", "/v1/turns", json=body)
        assert answer.status_code == 200, answer.text
        model = agent.api("GET", "/v1/status").json()["model"]
        assert (model["loaded"], model["threads"]) == (True, 1)
