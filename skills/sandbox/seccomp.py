"""A seccomp filter for sandboxed code (x86-64): system calls that no snippet needs and that
widen the kernel surface or reach other processes fail with EPERM; other ABIs are killed.

Namespaces and an unprivileged uid already stop most of these; the filter makes the outcome
explicit and keeps it so if a kernel bug or a setuid helper would otherwise let one through.
Built by hand as classic BPF, which `bwrap --seccomp FD` loads as-is (no libseccomp needed).
"""

from __future__ import annotations

import platform
import struct

# x86-64 system call numbers (arch/x86/entry/syscalls/syscall_64.tbl).
DENIED_X86_64: dict[str, int] = {
    "ptrace": 101, "personality": 135, "pivot_root": 155, "chroot": 161, "acct": 163, "mount": 165,
    "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "init_module": 175,
    "delete_module": 176, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
    "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
    "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
}

_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_RET_K = 0x06
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_EPERM = 1
_NR_OFFSET = 0
_ARCH_OFFSET = 4


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program() -> bytes | None:
    """The filter as `struct sock_filter[]` bytes, or None where it is not available (not x86-64)."""
    if platform.machine() != "x86_64":
        return None
    deny = _RET_ERRNO | _EPERM
    program = [
        _insn(_LD_W_ABS, 0, 0, _ARCH_OFFSET),
        _insn(_JEQ_K, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, _RET_KILL_PROCESS),  # i386 or another ABI: a different syscall table
        _insn(_LD_W_ABS, 0, 0, _NR_OFFSET),
        _insn(_JGE_K, 0, 1, _X32_SYSCALL_BIT),
        _insn(_RET_K, 0, 0, _RET_KILL_PROCESS),  # the x32 ABI
    ]
    for number in sorted(DENIED_X86_64.values()):
        program.append(_insn(_JEQ_K, 0, 1, number))
        program.append(_insn(_RET_K, 0, 0, deny))
    program.append(_insn(_RET_K, 0, 0, _RET_ALLOW))
    return b"".join(program)
