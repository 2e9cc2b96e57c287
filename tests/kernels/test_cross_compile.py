"""Cross-compiling the llvm build for phones (compile-only: the object is produced for the
right machine and exports the kernel's symbol; nothing runs it here)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

pytest.importorskip("tvm")

from edgespec.kernels.qmatmul import FORMATS, FUNC_NAME, qmatmul_func, schedule_cpu  # noqa: E402

EM_AARCH64 = 183
STT_FUNC = 2
STB_GLOBAL = 1


def elf_functions(data: bytes) -> tuple[int, set[str]]:
    """``(e_machine, names of the defined global functions)`` of a little-endian ELF64 object."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE object"
    machine = struct.unpack_from("<H", data, 18)[0]
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    names = set()
    for sh in sections:
        if sh[1] != 2:  # SHT_SYMTAB
            continue
        strtab = sections[sh[6]]  # sh_link: its string table
        for off in range(sh[4], sh[4] + sh[5], sh[9]):
            st_name, st_info, _, st_shndx = struct.unpack_from("<IBBH", data, off)
            if st_info >> 4 == STB_GLOBAL and st_info & 0xF == STT_FUNC and st_shndx != 0:
                start = strtab[4] + st_name
                names.add(data[start : data.index(b"\0", start)].decode())
    return machine, names


@pytest.mark.parametrize("triple", ["aarch64-linux-gnu", "aarch64-linux-android"])
def test_aarch64_object_has_the_kernel(triple: str, tmp_path: Path) -> None:
    import tvm
    from tvm.target import Target

    target = Target({"kind": "llvm", "mtriple": triple, "mcpu": "cortex-a76", "num-cores": 8})
    lib = tvm.compile(schedule_cpu(qmatmul_func(FORMATS["Q4_1"], 4, 64, 64)), target=target)
    obj = tmp_path / "qmatmul.o"
    lib.mod.write_to_file(str(obj))
    machine, functions = elf_functions(obj.read_bytes())
    assert machine == EM_AARCH64
    # TVM exports each function as a packed (tvm-ffi ABI) symbol, which a runtime looks up
    assert f"__tvm_ffi_{FUNC_NAME}" in functions, sorted(functions)
