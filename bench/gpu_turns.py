"""Local turns with every layer on the GPU: the agent (`[model] gpu_layers = -1`) against llama.cpp's
own llama-server (`-ngl 99`), both on one GPU build of llama.cpp (issue 13's GPU check).

    LLAMA_CPP_LIB_PATH=BUILD/bin python bench/gpu_turns.py --server BUILD/bin/llama-server \\
        [--models tiny,small,1b] [--reps 7] [--max-tokens 128] [--model-dir DIR] \\
        [--tokenizer GGUF] [--gguf-py DIR] [--deadline-s SECONDS]

BUILD is a llama.cpp build with a GPU backend and BUILD_SHARED_LIBS=ON, from the source the
installed llama-cpp-python vendors (its sdist's vendor/llama.cpp): llama-server runs from it, and
LLAMA_CPP_LIB_PATH makes llama-cpp-python (the bench's and the agent's) load its libllama. The run
stops with a message when that libllama cannot offload to a GPU.

Models, random-weight f16 GGUFs written here with gguf-py and SmolLM2's tokenizer and chat
template (`--tokenizer`: any GGUF that has them; default the embedded model):
  tiny   2 layers, width 64 (bench/_tiny_gguf.py's): per-token overhead is most of a token
  small  SmolLM2-135M's shape (30 layers, width 576), ~0.27 GB
  1b     TinyLlama-1.1B's shape (22 layers, width 2048), ~2.1 GB: the GPU's own speed shows

Sides, each streamed with the same prompt, max_tokens and temperature 0, rotating which goes first:
  llama-server     `llama-server -m MODEL -ngl 99`, its defaults otherwise (flash attention auto)
  agent            `POST /v1/turns` over its socket, WAYSTATION_MODEL__GPU_LAYERS=-1, its defaults
                   otherwise (flash_attention auto: on since the H100 run below, which measured
                   it off with GPU layers)
  agent fa=on      the same with WAYSTATION_MODEL__FLASH_ATTENTION=on (llama-server's auto picks
                   flash attention on CUDA: like for like)
  raw              llama-cpp-python in this process with the agent's default Llama(...) arguments
Decode tok/s and TTFT are measured as bench/turns.py measures them (bench/_turn_clients.py), with
no side counted above max_tokens (see `capped`). The GPU memory each process holds (nvidia-smi)
shows that its layers really are on the GPU.

Seen on an H100 (Ubuntu 24.04, glibc 2.39, Python 3.12, numpy 2.5.2, llama.cpp built with GCC 13.3
and CUDA 13.0, BUILD_SHARED_LIBS=ON): that CUDA libllama segfaults in llama_model_load_from_file
(at tokenizer init) in a process that imported numpy or aiohttp before llama_cpp, as the agent
does, so its first GPU turn killed it; LD_PRELOAD of libstdc++.so.6 or of the build's
libggml-cuda.so avoided it. A run that hits it stops at the warm-up, naming the agent that died.
"""

from __future__ import annotations

import contextlib

# llama_cpp (its libllama) is loaded before numpy and aiohttp come in: the note above. Not there
# yet is fine for --write-models, which needs no llama.cpp build.
with contextlib.suppress(ImportError, OSError, RuntimeError):
    import llama_cpp  # noqa: F401

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _harness import Agent, print_notes, print_table, progress, running_agent, uds_client
from _llama_server import running, threads_in_log
from _tiny_gguf import Shape, write_llama_gguf, write_tiny_gguf
from _turn_clients import Run, agent_turn, print_sides, raw_turn, server_turn
from turns import PROMPTS, Turn, timed

from waystation.adapters.models.llamacpp import LlamaOptions

SHAPES = {
    "small": Shape("SmolLM2-135M's shape, f16 random weights", 576, 30, 9, 3, 1536),
    "1b": Shape("TinyLlama-1.1B's shape, f16 random weights", 2048, 22, 32, 4, 5632),
}
TINY_LABEL = "tiny (bench/_tiny_gguf.py: 2 layers, width 64)"


def _f16_weights(rng: np.random.Generator, dims: tuple[int, ...]) -> Any:
    return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)


def write_random_gguf(out: Path, shape: Shape, tokenizer_from: Path, gguf_py: Path) -> Path:
    """A llama-architecture GGUF of `shape` with random f16 weights (_tiny_gguf's writer)."""
    return write_llama_gguf(out, shape, tokenizer_from, gguf_py, _f16_weights, f"waystation-bench-{out.stem}")


def make_model(key: str, model_dir: Path, tokenizer: Path, gguf_py: Path) -> tuple[str, Path]:
    if key == "tiny":
        return TINY_LABEL, write_tiny_gguf(model_dir / "tiny.gguf", tokenizer, gguf_py)
    shape = SHAPES[key]
    return f"{key} ({shape.label})", write_random_gguf(model_dir / f"{key}.gguf", shape, tokenizer, gguf_py)


def gpu_memory_mib() -> dict[int, int]:
    """GPU memory each process holds, by pid (nvidia-smi); empty where it cannot say."""
    if shutil.which("nvidia-smi") is None:
        return {}
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=False,
    )
    found = {}
    for line in out.stdout.splitlines():
        pid, _, mib = line.partition(",")
        if pid.strip().isdigit() and mib.strip().isdigit():
            found[int(pid)] = int(mib)
    return found


def server_log_facts(log: Path) -> str:
    """What llama-server says of its offload, flash attention, threads and slots."""
    keys = ("offloaded ", "flash_attn", "n_threads = ", "n_slots = ", "n_ctx ")
    found: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        for key in keys:
            if key in line and not any(key in f for f in found):
                found.append(line[line.index(key) :].strip())
    return "; ".join(found) or threads_in_log(log)


Measured = tuple[dict[str, list[Run]], list[str]]


async def measure(model: Path, binary: Path, reps: int, max_tokens: int, logs: Path) -> Measured:
    from llama_cpp import Llama

    env = {"WAYSTATION_MODEL__PATH": str(model), "WAYSTATION_MODEL__GPU_LAYERS": "-1"}
    runs: dict[str, list[Run]] = {}
    server_log = logs / f"llama-server-{model.stem}.log"
    async with (
        running_agent("offline", env) as agent,
        running_agent("offline", {**env, "WAYSTATION_MODEL__FLASH_ATTENTION": "on"}) as agent_fa,
        uds_client(agent.socket) as client,
        uds_client(agent_fa.socket) as client_fa,
        httpx.AsyncClient(timeout=120) as http,
    ):
        with running(binary, model, ["-ngl", "99"], server_log) as server:
            llm = Llama(model_path=str(model), verbose=False, **LlamaOptions(gpu_layers=-1).llama_kwargs())

            def on_agent(pid: int, c: Any) -> Turn:
                async def turn(prompt: str, n: int) -> Run:
                    return (await agent_turn(c, prompt, n))[0]

                return timed(pid, turn)

            async def raw(prompt: str, n: int) -> Run:
                return raw_turn(llm, prompt, n)

            sides: dict[str, Turn] = {
                "llama-server": timed(server.proc.pid, lambda p, n: server_turn(http, server.url, p, n)),
                "agent": on_agent(agent.pid, client),
                "agent fa=on": on_agent(agent_fa.pid, client_fa),
                "raw": raw,
            }
            for name, turn in sides.items():  # load and warm up each side
                try:
                    await turn("Say hello.", 8)
                except (RuntimeError, httpx.HTTPError) as exc:
                    raise RuntimeError(f"{name}: {exc!r}; {dead_agents(agent, agent_fa)}") from None
            memory = gpu_memory_mib()
            pids = {"llama-server": server.proc.pid, "agent": agent.pid, "agent fa=on": agent_fa.pid,
                    "raw (this process)": os.getpid()}  # fmt: skip
            held = ", ".join(f"{name} {memory.get(pid, '?')} MiB" for name, pid in pids.items())
            for rep in range(reps):
                names = list(sides)
                names = names[rep % len(names) :] + names[: rep % len(names)]
                for name in names:
                    run = await sides[name](PROMPTS[rep % len(PROMPTS)], max_tokens)
                    runs.setdefault(name, []).append(capped(run, max_tokens))
                progress(
                    f"{model.name} rep {rep + 1}/{reps}: "
                    + ", ".join(
                        f"{n} {r[-1].decode_tps:.0f} tok/s {r[-1].ttft_ms:.1f} ms" for n, r in runs.items()
                    )
                )
            llm.close()
    return runs, [f"GPU memory held (nvidia-smi): {held or 'nvidia-smi said nothing'}",
                  f"llama-server: `{' '.join(server.command)}`; it said: {server_log_facts(server_log)}",
                  f"agent: `{agent.how}`"]  # fmt: skip


def capped(run: Run, max_tokens: int) -> Run:
    """The agent (and raw) count a reply by tokenizing its text again; random weights say words
    that tokenize into more tokens than were sampled (135 for 128 on the 1b model), which would
    raise their decode rate. No side samples more than max_tokens."""
    if run.tokens > max_tokens:
        run.decode_tps *= (max_tokens - 1) / (run.tokens - 1)
        run.tokens = max_tokens
    return run


def dead_agents(*agents: Agent) -> str:
    """Which agent processes have exited, with how, and the end of their log."""
    dead = [a for a in agents if a.proc.poll() is not None]
    if not dead:
        return "the agents are running"
    return "; ".join(
        f"agent {a.pid} exited with {a.proc.returncode} (-11: SIGSEGV), its log ends: "
        + (a.home / "agent.log").read_text(errors="replace")[-600:]
        for a in dead
    )


def report(label: str, measured: Measured, max_tokens: int) -> None:
    runs, notes = measured
    median = statistics.median
    print(f"\n### {label}\n")
    print_sides(runs)
    print()
    rows = []
    for a, b, note in [
        ("agent", "llama-server", "each at its defaults, all layers on the GPU (goal >= 0.95, TTFT +10 ms)"),
        ("agent fa=on", "llama-server", "flash attention on both"),
        ("raw", "llama-server", "llama-cpp-python's own cost"),
        ("agent", "raw", "the agent's own cost"),
    ]:
        pairs = list(zip(runs[a], runs[b], strict=True))
        rows.append((
            f"{a} / {b}",
            median(x.decode_tps / y.decode_tps for x, y in pairs),
            median(x.ttft_ms - y.ttft_ms for x, y in pairs),
            median(x.ttft_ms / y.ttft_ms for x, y in pairs),
            note,
        ))  # fmt: skip
    print_table(["ratio (median of pairs)", "decode tok/s", "TTFT +ms", "TTFT ratio", "note"], rows)
    print_notes(*notes, f"max_tokens {max_tokens}, {len(runs['agent'])} repetitions per side")
    sys.stdout.flush()


def gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return "?"
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "?"


async def main_async(args: argparse.Namespace) -> None:
    started = time.monotonic()
    if args.tokenizer is None:
        from waystation.adapters.models.embedded import default_model_path

        args.tokenizer = default_model_path()
    args.model_dir.mkdir(parents=True, exist_ok=True)
    if args.write_models:  # needs no llama.cpp build: models can be written while it builds
        for key in args.models.split(","):
            label, model = make_model(key, args.model_dir, args.tokenizer, args.gguf_py)
            print(
                f"{label}: {model} ({model.stat().st_size / 1e6:.0f} MB, {time.monotonic() - started:.0f} s)"
            )
        return
    import llama_cpp

    if not llama_cpp.llama_supports_gpu_offload() and not args.cpu_ok:
        sys.exit(
            f"this llama-cpp-python loads a libllama without GPU offload ({llama_cpp.llama_cpp._base_path}): "
            "set LLAMA_CPP_LIB_PATH to a GPU build's directory"
        )
    logs = args.model_dir / "logs"
    logs.mkdir(exist_ok=True)
    print(f"GPU: {gpu_name()}; libllama: {llama_cpp.llama_cpp._base_path}; llama-server: {args.server}")
    for key in args.models.split(","):
        if args.deadline_s and time.monotonic() - started > args.deadline_s:
            progress(f"skipping {key}: past --deadline-s {args.deadline_s:g}")
            print(f"\n(skipped {key}: past the deadline)")
            continue
        made = time.monotonic()
        label, model = make_model(key, args.model_dir, args.tokenizer, args.gguf_py)
        progress(
            f"== {label}: {model} ({model.stat().st_size / 1e6:.0f} MB, {time.monotonic() - made:.0f} s)"
        )
        report(label, await measure(model, args.server, args.reps, args.max_tokens, logs), args.max_tokens)
    print_notes(
        f"reproduce: `LLAMA_CPP_LIB_PATH={llama_cpp.llama_cpp._base_path} python bench/gpu_turns.py "
        f"--server {args.server} --models {args.models} --reps {args.reps} --max-tokens {args.max_tokens}`",
        f"{time.monotonic() - started:.0f} s in all",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", type=Path, required=True, help="llama-server of the GPU build")
    parser.add_argument("--models", default="tiny,small,1b", help="tiny, small, 1b, comma-separated")
    parser.add_argument("--reps", type=int, default=7, help="repetitions per side")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "waystation-gpu-bench"
    )
    parser.add_argument("--tokenizer", type=Path, help="a GGUF with SmolLM2's tokenizer (default: embedded)")
    parser.add_argument("--gguf-py", type=Path, help="llama.cpp's gguf-py (default: the sdist's, cached)")
    parser.add_argument("--deadline-s", type=float, default=0, help="start no model after this many seconds")
    parser.add_argument("--write-models", action="store_true", help="write the models, measure nothing")
    parser.add_argument(
        "--cpu-ok", action="store_true", help="run on a CPU build too (to try the bench itself)"
    )
    args = parser.parse_args()
    if not set(args.models.split(",")) <= {"tiny", *SHAPES}:
        sys.exit("--models: tiny, small, 1b, comma-separated")
    if args.gguf_py is None:
        from _llama_server import cache_dir

        args.gguf_py = cache_dir() / "gguf-py"
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
