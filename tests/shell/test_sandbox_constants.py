"""The sandbox's raw syscall numbers against the kernel headers installed on this machine.

pivot_root has no libc wrapper, so the private root calls it by number, per architecture
(``PIVOT_ROOT_SYSCALL``). Only x86_64 runs here; the other architectures' numbers are checked against
the headers that describe them (the generic table serves aarch64, riscv64 and loongarch64; i386's
is installed beside x86_64's), not run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pyagent.shell import _sandbox as sb
from pyagent.shell.confine import NAMESPACE_LAYERS
from tests.security.helpers import attack

HEADERS = {
    "x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
    "i386": "/usr/include/x86_64-linux-gnu/asm/unistd_32.h",
    "i686": "/usr/include/x86_64-linux-gnu/asm/unistd_32.h",
    "aarch64": "/usr/include/asm-generic/unistd.h",
    "riscv64": "/usr/include/asm-generic/unistd.h",
    "loongarch64": "/usr/include/asm-generic/unistd.h",
}


def _number(header: str, name: str) -> int:
    found = re.search(rf"#define __NR_{name}\s+(\d+)", Path(header).read_text())
    assert found, f"{name} not in {header}"
    return int(found.group(1))


def test_pivot_root_numbers_match_the_kernel_headers() -> None:
    present = {arch: h for arch, h in HEADERS.items() if os.path.exists(h)}
    assert "x86_64" in present or os.uname().machine != "x86_64", "this x86_64 machine has its kernel headers"
    for arch, header in present.items():
        assert sb.PIVOT_ROOT_SYSCALL[arch] == _number(header, "pivot_root"), arch
    generic = "/usr/include/asm-generic/unistd.h"
    if os.path.exists(generic):  # landlock's numbers are the same everywhere (the generic table's)
        assert _number(generic, "landlock_create_ruleset") == sb.SYS_LANDLOCK_CREATE_RULESET
        assert _number(generic, "landlock_restrict_self") == sb.SYS_LANDLOCK_RESTRICT_SELF


def test_this_machine_has_a_pivot_root_number_and_the_private_root_is_reported(tmp_path: Path) -> None:
    """Where the number is known the private root is set up; the table names the layer either way."""
    assert "private root" in NAMESPACE_LAYERS
    res = attack("print('ran')", tmp_path)
    row = next(p for p in res.protections if p.name == "private root")
    if os.uname().machine in sb.PIVOT_ROOT_SYSCALL:
        assert row.active, row
    else:
        assert not row.active and "not known for" in row.detail, row
