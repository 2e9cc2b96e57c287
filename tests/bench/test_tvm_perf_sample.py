"""benchmarks/tvm_perf_sample.py: samples go to the kernel, library or thread they fell in."""

from __future__ import annotations

from edgespec.testing import load_script

LIB = "/home/u/.cache/edgespec/tvm/abc/model-llama-0/lib.so"
#: ``perf script --show-mmap-events -F tid,ip,dso`` as perf prints it: the library mapped at
#: 0x7f0000001000 from file offset 0x1000 (bias 0x7f0000000000), then samples of two threads
SCRIPT = f"""\
    0 PERF_RECORD_MMAP2 100/100: [0x7f0000001000(0x49000) @ 0x1000 fe:00 1761646 0]: r-xp {LIB}
    0 PERF_RECORD_MMAP2 100/100: [0x7f1000000000(0x1000) @ 0 fe:00 17 0]: r-xp /usr/lib/libc.so.6
     100      7f0000002010 ({LIB})
     100      7f0000003000 ({LIB})
     101      7f0000003fff ({LIB})
     101      7f0000004001 ({LIB})
     101  ffffffff81ac8090 ([kernel.kallsyms])
     100      7f1000000010 (/usr/lib/libc.so.6)
     101      7f00000f0000 ({LIB})
"""
SYMBOLS = [(0x1000, "_init"), (0x2000, "add_compute_"), (0x3000, "matmul_Q4_K_q8_64x64_compute_"),
           (0x4000, "rms_norm_compute_")]  # fmt: skip


def test_attribute_by_symbol_thread_and_object() -> None:
    """Each sample counts once, for the last symbol at or below its library address (the
    ``_compute_`` suffix dropped), the OS as ``[kernel]``, other objects by file name; an
    address past the mapping's end is not the library's."""
    mod = load_script("tvm_perf_sample.py")
    lines = SCRIPT.splitlines()
    bias, end = mod.model_mapping(lines, LIB)
    assert (bias, end) == (0x7F0000000000, 0x7F0000001000 + 0x49000)
    per = mod.attribute(lines, LIB, SYMBOLS, bias, end)
    assert dict(per["100"]) == {"add": 1, "matmul_Q4_K_q8_64x64": 1, "libc.so.6": 1}
    assert dict(per["101"]) == {
        "matmul_Q4_K_q8_64x64": 1,
        "rms_norm": 1,
        "[kernel]": 1,
        "lib.so": 1,
    }
    assert mod.model_mapping(lines, "/elsewhere/lib.so") is None
