"""What the CUDA driver sees in this process's environment: the PCI bus id of each device, in
CUDA's order. Only ctypes and the driver's libcuda.so.1 (no toolkit, no torch). Prints one JSON
object: {"bus_ids": [...]} or {"error": "..."}; exits 0 either way (the caller judges)."""

from __future__ import annotations

import ctypes
import json
import sys


def _error(lib: ctypes.CDLL, call: str, code: int) -> str:
    name = ctypes.c_char_p()
    lib.cuGetErrorName(code, ctypes.byref(name))
    return f"{call}: {(name.value or b'?').decode()} ({code})"


def main() -> dict[str, object]:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as error:
        return {"error": f"libcuda.so.1: {error}"}
    code = lib.cuInit(0)
    if code != 0:
        return {"error": _error(lib, "cuInit", code)}
    count = ctypes.c_int()
    code = lib.cuDeviceGetCount(ctypes.byref(count))
    if code != 0:
        return {"error": _error(lib, "cuDeviceGetCount", code)}
    bus_ids = []
    for ordinal in range(count.value):
        device = ctypes.c_int()
        lib.cuDeviceGet(ctypes.byref(device), ordinal)
        buffer = ctypes.create_string_buffer(64)
        code = lib.cuDeviceGetPCIBusId(buffer, 64, device)
        if code != 0:
            return {"error": _error(lib, "cuDeviceGetPCIBusId", code)}
        bus_ids.append(buffer.value.decode())
    return {"bus_ids": bus_ids}


if __name__ == "__main__":
    print(json.dumps(main()))
    sys.exit(0)
