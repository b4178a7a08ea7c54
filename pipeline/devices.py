"""Where ONNX sessions run: `--device`, whether CUDA really works here, which GPU a worker gets.

Devices (strings, so they pickle to workers as they are):
  auto    CUDA when it really works here (checked quietly), else the CPU, without a word;
  cpu     the CPU;
  cuda    a GPU, or a one-line UniError where CUDA cannot run — never a silent CPU run;
  cuda:N  GPU N of those the process sees (CUDA_VISIBLE_DEVICES renumbers them from 0).
A worker's GPU under auto / cuda is its slot modulo the visible GPUs (round-robin): local dask
workers are named 0, 1, …; a `dask worker` process takes its rank among the workers of its host.
"""

from __future__ import annotations

import ctypes
import functools
import re

from uniskel.core.errors import UniError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def parse_device(text: str, flag: str = "--device") -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' (lower-cased, spaces stripped); UniError otherwise."""
    d = str(text).strip().lower()
    if not _DEVICE.fullmatch(d):
        raise UniError(f"{flag} {text!r}: expected one of {', '.join(DEVICES)}")
    return d


def _libcuda():
    """The CUDA driver library, or None where there is no NVIDIA driver."""
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """GPUs this process sees (after CUDA_VISIBLE_DEVICES), from the driver; 0 without one."""
    lib = _libcuda()
    if lib is None:
        return 0
    n = ctypes.c_int(0)
    try:
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(n)) != 0:
            return 0
    except AttributeError:
        return 0
    return int(n.value)


def _probe_model() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


@functools.lru_cache(maxsize=1)
def cuda_problem() -> str | None:
    """None when onnxruntime really runs a session on CUDA here, else why not (a phrase).

    Quiet: asking onnxruntime-gpu for CUDA on a machine without it prints red load errors, so
    the driver and a GPU are checked first and a tiny probe session runs with the logger silenced.
    """
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDA provider (install onnxruntime-gpu)"
    if _libcuda() is None:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    if cuda_device_count() == 0:
        return "the driver sees no GPU (check CUDA_VISIBLE_DEVICES)"
    if hasattr(ort, "preload_dlls"):  # ORT ≥ 1.21 can load CUDA/cuDNN from the nvidia-* wheels
        try:
            ort.preload_dlls()
        except Exception:  # best effort; the probe session below decides
            pass
    ort.set_default_logger_severity(4)
    try:
        sess = ort.InferenceSession(_probe_model(), providers=[CUDA, CPU])
        ok = sess.get_providers()[0] == CUDA
    except Exception:
        ok = False
    finally:
        ort.set_default_logger_severity(2)
    return None if ok else "onnxruntime's CUDA provider does not load (CUDA or cuDNN libraries?)"


def resolve_device(device: str, slot: int = 0, flag: str = "--device") -> str:
    """A --device and a worker's slot → the concrete 'cpu' or 'cuda:N' its sessions use.

    auto is the CPU where CUDA cannot run; cuda / cuda:N there is a UniError."""
    device = parse_device(device, flag)
    if device == "cpu":
        return "cpu"
    problem = cuda_problem()
    if problem is not None:
        if device == "auto":
            return "cpu"
        raise UniError(f"{flag} {device}: CUDA cannot run here ({problem}); use --device cpu "
                       "or auto to run on the CPU")
    count = cuda_device_count()
    if device.startswith("cuda:"):
        index = int(device[5:])
        if index >= count:
            raise UniError(f"{flag} {device}: this process sees {count} GPU(s), "
                           f"numbered 0 to {count - 1}")
        return device
    return f"cuda:{slot % count}"


def session_providers(concrete: str) -> list:
    """'cpu' or 'cuda:N' → onnxruntime's providers argument (CUDA pinned through device_id)."""
    if concrete == "cpu":
        return [CPU]
    return [(CUDA, {"device_id": int(concrete.split(":")[1])}), CPU]


def pick_providers() -> tuple[str, ...]:
    """(CUDA, CPU) when CUDA really works here, else (CPU,): the providers `auto` uses."""
    return (CPU,) if cuda_problem() else (CUDA, CPU)


def provider_used(session) -> str:
    """What a session really runs on: 'CPUExecutionProvider' or 'CUDAExecutionProvider:N'."""
    first = session.get_providers()[0]
    if first == CUDA:
        return f"{CUDA}:{session.get_provider_options()[CUDA].get('device_id', 0)}"
    return first


def host_slot(address: str, workers: dict[str, dict]) -> int:
    """A dask worker's rank among the workers of its host (addresses sorted), from the
    scheduler's {address: {"host": …}}; 0 when it is not listed."""
    if address not in workers:
        return 0
    host = workers[address].get("host")
    return sorted(a for a, w in workers.items() if w.get("host") == host).index(address)


def worker_slot(name: object, address: str, workers: dict[str, dict] | None) -> int:
    """The slot a dask worker's GPU is chosen by: its name when that is a number (LocalCluster
    names workers 0, 1, …, and so may a user), else its rank on its host."""
    if isinstance(name, int) or (isinstance(name, str) and name.isdigit()):
        return int(name)
    return host_slot(address, workers or {})
