"""keep_freed_host_memory: glibc reuses freed memory for large CPU tensors instead of faulting fresh pages."""
import json
import platform
import subprocess
import sys
import textwrap

import pytest

from torchrl_sapg import runtime
from torchrl_sapg.runtime import keep_freed_host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 20 allocations of a 64 MiB tensor, each written in full: minor page faults before and after the switch
_PROBE = textwrap.dedent("""
    import json, resource, torch
    from torchrl_sapg.runtime import keep_freed_host_memory

    def faults():
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):
            torch.empty(16 << 20).fill_(1.0)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

    before = faults()  # glibc's default: every 64 MiB block is a fresh mmap, faulted page by page
    kept = keep_freed_host_memory()
    faults()  # the first allocation after the switch may still fault its pages once
    print(json.dumps({"before": before, "after": faults(), "kept": kept}))
""")


def _probe() -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_large_tensors_stop_page_faulting():
    pages = (64 << 20) // 4096  # one 64 MiB tensor's pages
    probe = _probe()  # in a subprocess: the setting lasts for the process
    assert probe["kept"] is True
    assert probe["before"] >= 10 * pages
    assert probe["after"] < pages // 4  # the freed block is reused: almost no faults at all


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *a, **k: pytest.fail("mallopt must not be looked up"))
    assert keep_freed_host_memory() is False


def test_negative_trim_threshold_is_refused():
    with pytest.raises(ValueError, match=r"trim_threshold=-1: pass a byte count >= 0"):
        keep_freed_host_memory(trim_threshold=-1)
