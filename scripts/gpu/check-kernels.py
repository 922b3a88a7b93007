#!/usr/bin/env python3
"""Compile ferrotune's runtime CUDA kernels (crates/model/src/kernels/*.cu, in the order ops/cuda.rs lists them)
with the NVRTC of .venv-cuda, here on the GPU-less machine: the CPU build never compiles them and
the GPU machine would only find a syntax error at the first training step.
Usage (build-cuda.sh runs it): LD_LIBRARY_PATH=<cu13 lib> python3 scripts/gpu/check-kernels.py"""
import ctypes
import glob
import re
import os
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
# The same files, in the same order, as `SOURCES` in crates/model/src/ops/cuda.rs.
rs = open(os.path.join(root, "crates/model/src/ops/cuda.rs"), encoding="utf-8").read()
names = re.findall(r'include_str!\("\.\./kernels/([a-z0-9_]+\.(?:cuh|cu))"\)', rs)
if not names:
    sys.exit("error: no include_str!(\"../kernels/...\") in crates/model/src/ops/cuda.rs")
src = "".join(open(os.path.join(root, "crates/model/src/kernels", n), encoding="utf-8").read() for n in names).encode()
libs = glob.glob(os.path.join(root, ".venv-cuda/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13"))
if not libs:
    sys.exit("error: no libnvrtc.so.13 under .venv-cuda (run scripts/gpu/build-cuda.sh once)")
nvrtc = ctypes.CDLL(libs[0])
prog = ctypes.c_void_p()
if nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"ferrotune_rows.cu", 0, None, None) != 0:
    sys.exit("error: nvrtcCreateProgram failed")
opts = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_90")
rc = nvrtc.nvrtcCompileProgram(prog, 1, opts)
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(prog, log)
if rc != 0:
    sys.exit(f"error: NVRTC rejected the kernels (code {rc}):\n{log.value.decode()}")
print(f"NVRTC compiled the runtime kernels ({len(names)} files, {len(src)} bytes of source)")
