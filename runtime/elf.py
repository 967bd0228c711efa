"""Sanity checks of a shared library's bytes before it is opened with dlopen.

A library whose hash checks out can still be unusable: truncated (the manifest edited to match), built for
another machine, or not a shared object at all. dlopen maps such a file and the process dies on the first
access past its end (SIGBUS), so the header, every program header and every section must lie inside the file
and the machine must be this one's. This is a check against accidents and crashes, not against a crafted
library — that is what the manifest's hashes and signature are for.
"""

from __future__ import annotations

import platform
import struct

from ..errors import ArtifactError

MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}  # uname -m -> ELF e_machine
MACHINE_NAMES = {62: "x86-64", 183: "aarch64", 40: "arm", 3: "x86", 243: "riscv"}
ET_DYN, SHT_NOBITS = 3, 8


def check_shared_library(data: bytes, name: str) -> None:
    """Raise ArtifactError unless `data` is a complete 64-bit little-endian shared object for this machine."""
    def bad(why: str) -> ArtifactError:
        return ArtifactError(f"{name} is not a usable shared library for this machine ({why}); rebuild the artifact")

    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise bad("no ELF header" if data[:4] != b"\x7fELF" else "truncated header")
    if data[4] != 2 or data[5] != 1:
        raise bad("not a 64-bit little-endian ELF file")
    (e_type, e_machine, _, _, e_phoff, e_shoff, _, _, e_phentsize, e_phnum, e_shentsize,
     e_shnum, _) = struct.unpack_from("<HHIQQQIHHHHHH", data, 16)
    if e_type != ET_DYN:
        raise bad(f"ELF type {e_type}, not a shared object")
    host = MACHINES.get(platform.machine().lower())
    if host is not None and e_machine != host:
        raise bad(f"built for {MACHINE_NAMES.get(e_machine, e_machine)}, this machine is {platform.machine()}")
    if e_phentsize < 56 or e_phoff + e_phnum * e_phentsize > len(data):
        raise bad("program headers past the end of the file: truncated")
    if e_shnum and (e_shentsize < 64 or e_shoff + e_shnum * e_shentsize > len(data)):
        raise bad("section headers past the end of the file: truncated")
    for i in range(e_phnum):
        base = e_phoff + i * e_phentsize
        (offset,), (filesz,) = struct.unpack_from("<Q", data, base + 8), struct.unpack_from("<Q", data, base + 32)
        if offset + filesz > len(data):
            raise bad(f"segment {i} ends at byte {offset + filesz} of {len(data)}: truncated")
    for i in range(e_shnum):
        sh_type = struct.unpack_from("<I", data, e_shoff + i * e_shentsize + 4)[0]
        offset, size = struct.unpack_from("<QQ", data, e_shoff + i * e_shentsize + 24)
        if sh_type != SHT_NOBITS and offset + size > len(data):
            raise bad(f"section {i} ends at byte {offset + size} of {len(data)}: truncated")
