"""Does torch on a CUDA GPU still work under the units' SystemCallFilter? Run it on the GPU machine.

systemd/i2vd.service denies a list of system calls (``SystemCallFilter=~@clock @cpu-emulation
@debug @module @mount @obsolete @raw-io @reboot @swap``, with ``SystemCallErrorNumber=EPERM``).
A call no test on a CPU makes, made by the CUDA driver or a library only on a GPU, would then
fail there. This installs the same deny list with seccomp in a fresh child process (no systemd
needed), which builds the tiny model, loads it on the GPU and generates a clip; in three ways:

- ``errno``: a denied call fails with EPERM, as under the unit;
- ``kill``: the process is killed at the first denied call: if this run finishes, nothing on the
  list was even tried on the way;
- ``kill+privileged``: the same with ``@privileged`` added, which the units leave out.

The x86-64 numbers below are systemd 252's groups (``systemd-analyze syscall-filter``) looked up
in the kernel's unistd_64.h. Prints one line per run; exit status 0 when the first two finished.

    python scripts/syscall_filter_check.py            # on the GPU machine, from the repository
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The units' deny list (the nine groups above), x86-64 system call numbers.
UNIT_DENIED = {
    "ptrace": 101,
    "uselib": 134,
    "ustat": 136,
    "sysfs": 139,
    "modify_ldt": 154,
    "pivot_root": 155,
    "_sysctl": 156,
    "adjtimex": 159,
    "chroot": 161,
    "settimeofday": 164,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "init_module": 175,
    "delete_module": 176,
    "get_kernel_syms": 177,
    "query_module": 178,
    "getpmsg": 181,
    "putpmsg": 182,
    "afs_syscall": 183,
    "tuxcall": 184,
    "security": 185,
    "lookup_dcookie": 212,
    "clock_settime": 227,
    "vserver": 236,
    "kexec_load": 246,
    "perf_event_open": 298,
    "clock_adjtime": 305,
    "finit_module": 313,
    "kexec_file_load": 320,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
}
# What @privileged adds to that.
PRIVILEGED = {
    "chown": 92,
    "fchown": 93,
    "lchown": 94,
    "setuid": 105,
    "setreuid": 113,
    "setgroups": 116,
    "setresuid": 117,
    "setfsuid": 122,
    "capset": 126,
    "vhangup": 153,
    "acct": 163,
    "sethostname": 170,
    "setdomainname": 171,
    "quotactl": 179,
    "nfsservctl": 180,
    "fchownat": 260,
    "fanotify_init": 300,
    "fanotify_mark": 301,
    "open_by_handle_at": 304,
    "bpf": 321,
    "quotactl_fd": 443,
}

AUDIT_ARCH_X86_64 = 0xC000003E
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
EPERM = 1


class SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def install(numbers: list[int], action: int) -> None:
    """A seccomp filter: ``action`` for each of ``numbers`` (x86-64 calls), everything else allowed."""
    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    n = len(numbers)
    prog = [
        SockFilter(ld_abs, 0, 0, 4),  # seccomp_data.arch
        SockFilter(jeq, 1, 0, AUDIT_ARCH_X86_64),
        SockFilter(ret, 0, 0, SECCOMP_RET_ALLOW),  # another ABI: the units allow native calls only
        SockFilter(ld_abs, 0, 0, 0),  # seccomp_data.nr
        *(SockFilter(jeq, n - i, 0, nr) for i, nr in enumerate(numbers)),
        SockFilter(ret, 0, 0, SECCOMP_RET_ALLOW),
        SockFilter(ret, 0, 0, action),
    ]
    array = (SockFilter * len(prog))(*prog)
    fprog = SockFprog(len(prog), array)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def child(mode: str) -> None:
    if mode != "none":
        numbers = sorted({*UNIT_DENIED.values(), *(PRIVILEGED.values() if "privileged" in mode else ())})
        install(numbers, SECCOMP_RET_ERRNO | EPERM if mode == "errno" else SECCOMP_RET_KILL_PROCESS)
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from PIL import Image

    from daemon.engine.interface import GenerationRequest
    from daemon.engine.load import load_generator

    with tempfile.TemporaryDirectory() as cache:
        gen = load_generator("tiny", revision=None, device="cuda", dtype="auto", cache_dir=Path(cache))
        pixels = np.random.default_rng(0).integers(0, 256, (256, 384, 3), dtype=np.uint8)
        req = GenerationRequest(
            image=Image.fromarray(pixels), width=384, height=256, prompt="a boat", negative_prompt="",
            num_frames=8, fps=8, steps=4, guidance_scale=9.0, seed=1,
        )  # fmt: skip
        frames = gen.generate(req).frames
    print(f"frames {frames.shape} on {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
        return 0
    if platform.machine() != "x86_64":
        print(f"this check knows x86-64 system call numbers only, not {platform.machine()}")
        return 2
    ok = True
    for mode in ("none", "errno", "kill", "kill+privileged"):
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", mode], capture_output=True, text=True, timeout=900
        )
        last = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or ["(nothing)"])[-1]
        verdict = "finished" if proc.returncode == 0 else f"exit status {proc.returncode}"
        print(f"{mode:16} {verdict:18} {time.monotonic() - started:6.1f} s  {last}", flush=True)
        ok &= proc.returncode == 0 or mode == "kill+privileged"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
