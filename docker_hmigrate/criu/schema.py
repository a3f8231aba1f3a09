"""Protobuf schemas for the CRIU image entries this library reads and writes.

The schemas are built at import time as descriptors in Python (descriptor_pb2) inside a
private DescriptorPool, and turned into classes with message_factory.GetMessageClass.
Why this way rather than .proto files:
- no protoc and no grpcio-tools at build or run time, no generated code in the tree;
  it works the same on the upb, C++ and pure-Python protobuf backends;
- a private pool cannot clash with another copy of CRIU's schemas (pycriu) loaded in
  the same process, because CRIU's names are global in the default pool.

Field names and numbers follow CRIU's published image format (images/*.proto); only
the messages and fields we need are declared. Rules that keep writing byte-exact:
- protobuf keeps fields it does not know as unknown fields and writes them back;
- sub-messages we do not interpret are declared as ``bytes`` (same wire type 2 as a
  message), so they stay opaque *in their place*: unknown fields are written after
  all known ones, which would reorder bytes;
- CRIU enums are declared as ``uint32`` (IntEnum constants in Python): proto2 enums are
  closed, and a value our schema does not list would be moved to the unknown fields.
  All CRIU enum values are small and non-negative, so the varint encoding is the same.
"""

from __future__ import annotations

import enum
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

PACKAGE = "hmigrate.criu"

_SCALARS = {
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "sint32": descriptor_pb2.FieldDescriptorProto.TYPE_SINT32,
    "sint64": descriptor_pb2.FieldDescriptorProto.TYPE_SINT64,
    "fixed64": descriptor_pb2.FieldDescriptorProto.TYPE_FIXED64,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
}
_LABELS = {
    "req": descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED,
    "opt": descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
    "rep": descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
}

# message name -> fields as (label, type, name, number[, default]); a type that is not a
# scalar names another message here. Label "req" is CRIU's "required": protobuf then
# refuses to serialize a message missing it, which guards recode's hand-built entries.
MESSAGES: dict[str, list[tuple[Any, ...]]] = {
    # inventory.img
    "inventory_entry": [
        ("req", "uint32", "img_version", 1),
        ("opt", "bool", "fdinfo_per_id", 2),
        ("opt", "task_kobj_ids_entry", "root_ids", 3),
        ("opt", "bool", "ns_per_id", 4),
        ("opt", "uint32", "root_cg_set", 5),
        ("opt", "uint32", "lsmtype", 6),
        ("opt", "uint64", "dump_uptime", 8),
        ("opt", "uint32", "pre_dump_mode", 9),
        ("opt", "bool", "tcp_close", 10),
        ("opt", "uint32", "network_lock_method", 11),
        ("opt", "plugins_entry", "plugins_entry", 12),
        ("opt", "string", "dump_criu_run_id", 13),
        ("opt", "bool", "allow_uprobes", 14),
    ],
    "plugins_entry": [("rep", "string", "plugins", 12)],
    # pstree.img
    "pstree_entry": [
        ("req", "uint32", "pid", 1),
        ("req", "uint32", "ppid", 2),
        ("req", "uint32", "pgid", 3),
        ("req", "uint32", "sid", 4),
        ("rep", "uint32", "threads", 5),
    ],
    # ids-N.img, and inside core/inventory
    "task_kobj_ids_entry": [
        ("req", "uint32", "vm_id", 1),
        ("req", "uint32", "files_id", 2),
        ("req", "uint32", "fs_id", 3),
        ("req", "uint32", "sighand_id", 4),
        ("opt", "uint32", "pid_ns_id", 5),
        ("opt", "uint32", "net_ns_id", 6),
        ("opt", "uint32", "ipc_ns_id", 7),
        ("opt", "uint32", "uts_ns_id", 8),
        ("opt", "uint32", "mnt_ns_id", 9),
        ("opt", "uint32", "user_ns_id", 10),
        ("opt", "uint32", "cgroup_ns_id", 11),
        ("opt", "uint32", "time_ns_id", 12),
    ],
    # core-N.img: one per thread
    "core_entry": [
        ("req", "uint32", "mtype", 1),  # March
        ("opt", "thread_info_x86", "thread_info", 2),
        ("opt", "task_core_entry", "tc", 3),
        ("opt", "task_kobj_ids_entry", "ids", 4),
        ("opt", "thread_core_entry", "thread_core", 5),
        ("opt", "bytes", "ti_arm", 6),
        ("opt", "thread_info_aarch64", "ti_aarch64", 8),
        ("opt", "bytes", "ti_ppc64", 9),
        ("opt", "bytes", "ti_s390", 10),
        ("opt", "bytes", "ti_mips", 11),
        ("opt", "bytes", "ti_loongarch64", 12),
        ("opt", "bytes", "ti_riscv64", 13),
    ],
    "task_core_entry": [
        ("req", "uint32", "task_state", 1),
        ("req", "uint32", "exit_code", 2),
        ("req", "uint32", "personality", 3),
        ("req", "uint32", "flags", 4),
        ("req", "uint64", "blk_sigset", 5),
        ("req", "string", "comm", 6),
        ("opt", "task_timers_entry", "timers", 7),
        ("opt", "task_rlimits_entry", "rlimits", 8),
        ("opt", "uint32", "cg_set", 9),
        ("opt", "signal_queue_entry", "signals_s", 10),
        ("opt", "uint32", "old_seccomp_mode", 11),
        ("opt", "uint32", "old_seccomp_filter", 12),
        ("opt", "uint32", "loginuid", 13),
        ("opt", "int32", "oom_score_adj", 14),
        ("rep", "sa_entry", "sigactions", 15),
        ("opt", "bool", "child_subreaper", 18),
        ("opt", "uint64", "blk_sigset_extended", 20),
        ("opt", "uint32", "stop_signo", 21),
        ("opt", "uint32", "membarrier_registration_mask", 22),
    ],
    "thread_core_entry": [
        ("req", "uint64", "futex_rla", 1),
        ("req", "uint32", "futex_rla_len", 2),
        ("opt", "sint32", "sched_nice", 3),
        ("opt", "uint32", "sched_policy", 4),
        ("opt", "uint32", "sched_prio", 5),
        ("opt", "uint64", "blk_sigset", 6),
        ("opt", "thread_sas_entry", "sas", 7),
        ("opt", "uint32", "pdeath_sig", 8),
        ("opt", "signal_queue_entry", "signals_p", 9),
        ("opt", "creds_entry", "creds", 10),
        ("opt", "uint32", "seccomp_mode", 11),
        ("opt", "uint32", "seccomp_filter", 12),
        ("opt", "string", "comm", 13),
        ("opt", "uint64", "blk_sigset_extended", 14),
        ("opt", "rseq_entry", "rseq_entry", 15),
        ("opt", "uint32", "cg_set", 16),
    ],
    "thread_sas_entry": [
        ("req", "uint64", "ss_sp", 1),
        ("req", "uint64", "ss_size", 2),
        ("req", "uint32", "ss_flags", 3),
    ],
    "task_timers_entry": [
        ("req", "itimer_entry", "real", 1),
        ("req", "itimer_entry", "virt", 2),
        ("req", "itimer_entry", "prof", 3),
        ("rep", "bytes", "posix", 4),  # posix_timer_entry, ISA-neutral
    ],
    "itimer_entry": [
        ("req", "uint64", "isec", 1),
        ("req", "uint64", "iusec", 2),
        ("req", "uint64", "vsec", 3),
        ("req", "uint64", "vusec", 4),
    ],
    "task_rlimits_entry": [("rep", "rlimit_entry", "rlimits", 1)],
    "rlimit_entry": [("req", "uint64", "cur", 1), ("req", "uint64", "max", 2)],
    "signal_queue_entry": [("rep", "siginfo_entry", "signals", 1)],
    "siginfo_entry": [("req", "bytes", "siginfo", 1)],  # raw siginfo_t: per-ISA layout
    "sa_entry": [
        ("req", "uint64", "sigaction", 1),
        ("req", "uint64", "flags", 2),
        ("req", "uint64", "restorer", 3),
        ("req", "uint64", "mask", 4),
        ("opt", "bool", "compat_sigaction", 5),
        ("opt", "uint64", "mask_extended", 6),
    ],
    "rseq_entry": [
        ("req", "uint64", "rseq_abi_pointer", 1),
        ("req", "uint32", "rseq_abi_size", 2),
        ("req", "uint32", "signature", 3),
        ("opt", "uint64", "rseq_cs_pointer", 4),
    ],
    # creds-N.img (old images) and thread_core.creds
    "creds_entry": [
        ("req", "uint32", "uid", 1),
        ("req", "uint32", "gid", 2),
        ("req", "uint32", "euid", 3),
        ("req", "uint32", "egid", 4),
        ("req", "uint32", "suid", 5),
        ("req", "uint32", "sgid", 6),
        ("req", "uint32", "fsuid", 7),
        ("req", "uint32", "fsgid", 8),
        ("rep", "uint32", "cap_inh", 9),
        ("rep", "uint32", "cap_prm", 10),
        ("rep", "uint32", "cap_eff", 11),
        ("rep", "uint32", "cap_bnd", 12),
        ("req", "uint32", "secbits", 13),
        ("rep", "uint32", "groups", 14),
        ("opt", "string", "lsm_profile", 15),
        ("opt", "string", "lsm_sockcreate", 16),
        ("opt", "bytes", "apparmor_data", 17),
        ("opt", "uint32", "no_new_privs", 18),
        ("rep", "uint32", "cap_amb", 19),
    ],
    # x86-64 thread state
    "thread_info_x86": [
        ("req", "uint64", "clear_tid_addr", 1),
        ("req", "user_x86_regs_entry", "gpregs", 2),
        ("req", "user_x86_fpregs_entry", "fpregs", 3),
        ("rep", "user_desc_t", "tls", 4),
    ],
    "user_x86_regs_entry": [
        *[("req", "uint64", n, i + 1) for i, n in enumerate((
            "r15", "r14", "r13", "r12", "bp", "bx", "r11", "r10", "r9", "r8", "ax", "cx",
            "dx", "si", "di", "orig_ax", "ip", "cs", "flags", "sp", "ss", "fs_base",
            "gs_base", "ds", "es", "fs", "gs"))],
        ("opt", "uint32", "mode", 28, "1"),  # user_x86_regs_mode: 1 NATIVE, 2 COMPAT
    ],
    "user_x86_fpregs_entry": [
        ("req", "uint32", "cwd", 1),
        ("req", "uint32", "swd", 2),
        ("req", "uint32", "twd", 3),
        ("req", "uint32", "fop", 4),
        ("req", "uint64", "rip", 5),
        ("req", "uint64", "rdp", 6),
        ("req", "uint32", "mxcsr", 7),
        ("req", "uint32", "mxcsr_mask", 8),
        ("rep", "uint32", "st_space", 9),
        ("rep", "uint32", "xmm_space", 10),
        ("rep", "uint32", "padding", 11),
        ("opt", "user_x86_xsave_entry", "xsave", 13),
    ],
    "user_x86_xsave_entry": [
        ("req", "uint64", "xstate_bv", 1),
        ("rep", "uint32", "ymmh_space", 2),
        ("rep", "uint64", "bndreg_state", 3),
        ("rep", "uint64", "bndcsr_state", 4),
        ("rep", "uint64", "opmask_reg", 5),
        ("rep", "uint64", "zmm_upper", 6),
        ("rep", "uint64", "hi16_zmm", 7),
        ("rep", "uint32", "pkru", 8),
        ("opt", "bytes", "cet", 9),
    ],
    "user_desc_t": [
        ("req", "uint32", "entry_number", 1),
        ("req", "uint32", "base_addr", 2),
        ("req", "uint32", "limit", 3),
        ("req", "bool", "seg_32bit", 4),
        ("req", "bool", "contents_h", 5),
        ("req", "bool", "contents_l", 6),
        ("req", "bool", "read_exec_only", 7, "true"),
        ("req", "bool", "limit_in_pages", 8),
        ("req", "bool", "seg_not_present", 9, "true"),
        ("req", "bool", "usable", 10),
    ],
    # aarch64 thread state
    "thread_info_aarch64": [
        ("req", "uint64", "clear_tid_addr", 1),
        ("req", "uint64", "tls", 2),  # TPIDR_EL0
        ("req", "user_aarch64_regs_entry", "gpregs", 3),
        ("req", "user_aarch64_fpsimd_context_entry", "fpsimd", 4),
        ("opt", "bytes", "pac_keys", 5),
    ],
    "user_aarch64_regs_entry": [
        ("rep", "uint64", "regs", 1),  # x0..x30
        ("req", "uint64", "sp", 2),
        ("req", "uint64", "pc", 3),
        ("req", "uint64", "pstate", 4),
    ],
    "user_aarch64_fpsimd_context_entry": [
        ("rep", "uint64", "vregs", 1),  # v0..v31 as 64 halves (lo, hi)
        ("req", "uint32", "fpsr", 2),
        ("req", "uint32", "fpcr", 3),
    ],
    # mm-N.img
    "mm_entry": [
        ("req", "uint64", "mm_start_code", 1),
        ("req", "uint64", "mm_end_code", 2),
        ("req", "uint64", "mm_start_data", 3),
        ("req", "uint64", "mm_end_data", 4),
        ("req", "uint64", "mm_start_stack", 5),
        ("req", "uint64", "mm_start_brk", 6),
        ("req", "uint64", "mm_brk", 7),
        ("req", "uint64", "mm_arg_start", 8),
        ("req", "uint64", "mm_arg_end", 9),
        ("req", "uint64", "mm_env_start", 10),
        ("req", "uint64", "mm_env_end", 11),
        ("req", "uint32", "exe_file_id", 12),
        ("rep", "uint64", "mm_saved_auxv", 13),
        ("rep", "vma_entry", "vmas", 14),
        ("opt", "int32", "dumpable", 15),
        ("rep", "bytes", "aios", 16),
        ("opt", "bool", "thp_disabled", 17),
    ],
    "vma_entry": [
        ("req", "uint64", "start", 1),
        ("req", "uint64", "end", 2),
        ("req", "uint64", "pgoff", 3),
        ("req", "uint64", "shmid", 4),  # file id in files.img for file mappings
        ("req", "uint32", "prot", 5),
        ("req", "uint32", "flags", 6),
        ("req", "uint32", "status", 7),
        ("req", "sint64", "fd", 8),
        ("opt", "uint64", "madv", 9),
        ("opt", "uint32", "fdflags", 10),
    ],
    # pagemap-N.img: one head, then entries
    "pagemap_head": [("req", "uint32", "pages_id", 1)],
    "pagemap_entry": [
        ("req", "uint64", "vaddr", 1),
        ("req", "uint32", "compat_nr_pages", 2),
        ("opt", "bool", "in_parent", 3),
        ("opt", "uint32", "flags", 4),
        ("opt", "uint64", "nr_pages", 5),
    ],
    # fdinfo-N.img
    "fdinfo_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "flags", 2),
        ("req", "uint32", "type", 3),  # FdType
        ("req", "uint32", "fd", 4),
        ("opt", "string", "xattr_security_selinux", 5),
    ],
    # files.img: every open file object, keyed by id
    "file_entry": [
        ("req", "uint32", "type", 1),  # FdType
        ("req", "uint32", "id", 2),
        ("opt", "reg_file_entry", "reg", 3),
        ("opt", "inet_sk_entry", "isk", 4),
        ("opt", "ns_file_entry", "nsf", 5),
        ("opt", "bytes", "psk", 6),
        ("opt", "bytes", "nlsk", 7),
        ("opt", "eventfd_file_entry", "efd", 8),
        ("opt", "eventpoll_file_entry", "epfd", 9),
        ("opt", "bytes", "sgfd", 10),
        ("opt", "bytes", "tunf", 11),
        ("opt", "bytes", "tfd", 12),
        ("opt", "bytes", "ify", 13),
        ("opt", "bytes", "ffy", 14),
        ("opt", "bytes", "ext", 15),
        ("opt", "unix_sk_entry", "usk", 16),
        ("opt", "bytes", "fifo", 17),
        ("opt", "pipe_entry", "pipe", 18),
        ("opt", "tty_file_entry", "tty", 19),
        ("opt", "memfd_file_entry", "memfd", 20),
        ("opt", "bytes", "bpf", 21),
        ("opt", "bytes", "pidfd", 22),
    ],
    # memfd.img and file_entry.memfd: memfd objects, and (CRIU 4.x) anonymous shared
    # memory, which CRIU dumps as a memfd named after its "/dev/zero" mapping
    "memfd_file_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "flags", 2),
        ("req", "uint64", "pos", 3),
        ("req", "fown_entry", "fown", 4),
        ("opt", "uint32", "inode_id", 5),
    ],
    "memfd_inode_entry": [
        ("req", "string", "name", 1),
        ("req", "uint32", "uid", 2),
        ("req", "uint32", "gid", 3),
        ("req", "uint64", "size", 4),
        ("req", "uint32", "shmid", 5),  # names pagemap-shmem-<shmid>.img (its pages)
        ("req", "uint32", "seals", 6),
        ("req", "uint64", "inode_id", 7),
        ("opt", "bool", "hugetlb", 8),
        ("opt", "uint32", "mode", 9),
    ],
    "fown_entry": [
        ("req", "uint32", "uid", 1),
        ("req", "uint32", "euid", 2),
        ("req", "uint32", "signum", 3),
        ("req", "uint32", "pid_type", 4),
        ("req", "uint32", "pid", 5),
    ],
    # reg-files.img (old images) and file_entry.reg
    "reg_file_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "flags", 2),
        ("req", "uint64", "pos", 3),
        ("req", "fown_entry", "fown", 5),
        ("req", "string", "name", 6),
        ("opt", "sint32", "mnt_id", 7, "-1"),
        ("opt", "uint64", "size", 8),
        ("opt", "bool", "ext", 9),
        ("opt", "uint32", "mode", 10),
        ("rep", "uint32", "build_id", 11),
        ("opt", "uint32", "checksum", 12),
        ("opt", "uint32", "checksum_config", 13),
        ("opt", "uint32", "checksum_parameter", 14),
    ],
    "pipe_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "pipe_id", 2),
        ("req", "uint32", "flags", 3),
        ("req", "fown_entry", "fown", 4),
    ],
    "inet_sk_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "ino", 2),
        ("req", "uint32", "family", 3),
        ("req", "uint32", "type", 4),
        ("req", "uint32", "proto", 5),
        ("req", "uint32", "state", 6),
        ("req", "uint32", "src_port", 7),
        ("req", "uint32", "dst_port", 8),
        ("req", "uint32", "flags", 9),
        ("req", "uint32", "backlog", 10),
        ("rep", "uint32", "src_addr", 11),
        ("rep", "uint32", "dst_addr", 12),
        ("req", "fown_entry", "fown", 13),
        ("req", "bytes", "opts", 14),
        ("opt", "bool", "v6only", 15),
        ("opt", "bytes", "ip_opts", 16),
        ("opt", "string", "ifname", 17),
        ("opt", "uint32", "ns_id", 18),
        ("opt", "uint32", "shutdown", 19),
        ("opt", "bytes", "tcp_opts", 20),
    ],
    "unix_sk_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "ino", 2),
        ("req", "uint32", "type", 3),
        ("req", "uint32", "state", 4),
        ("req", "uint32", "flags", 5),
        ("req", "uint32", "uflags", 6),
        ("req", "uint32", "backlog", 7),
        ("req", "uint32", "peer", 8),
        ("req", "fown_entry", "fown", 9),
        ("req", "bytes", "opts", 10),
        ("req", "bytes", "name", 11),
        ("opt", "uint32", "shutdown", 12),
        ("opt", "bytes", "file_perms", 13),
        ("opt", "string", "name_dir", 14),
        ("opt", "bool", "deleted", 15),
        ("opt", "uint32", "ns_id", 16),
        ("opt", "sint32", "mnt_id", 17, "-1"),
    ],
    "ns_file_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "ns_id", 2),
        ("req", "uint32", "ns_cflag", 3),
        ("req", "uint32", "flags", 4),
    ],
    "eventfd_file_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "flags", 2),
        ("req", "fown_entry", "fown", 3),
        ("req", "uint64", "counter", 4),
    ],
    "eventpoll_file_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "flags", 2),
        ("req", "fown_entry", "fown", 3),
        ("rep", "eventpoll_tfd_entry", "tfd", 4),
    ],
    "eventpoll_tfd_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "tfd", 2),
        ("req", "uint32", "events", 3),
        ("req", "uint64", "data", 4),  # epoll_data: may hold a pointer
        ("opt", "uint32", "dev", 5),
        ("opt", "uint64", "inode", 6),
        ("opt", "uint64", "pos", 7),
    ],
    "tty_file_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "tty_info_id", 2),
        ("req", "uint32", "flags", 3),
        ("req", "fown_entry", "fown", 4),
        ("opt", "uint32", "regf_id", 6),
    ],
    # tty-info.img
    "tty_info_entry": [
        ("req", "uint32", "id", 1),
        ("req", "uint32", "type", 2),
        ("req", "bool", "locked", 3),
        ("req", "bool", "exclusive", 4),
        ("req", "bool", "packet_mode", 5),
        ("req", "uint32", "sid", 6),
        ("req", "uint32", "pgrp", 7),
        ("req", "uint32", "rdev", 8),
        ("opt", "bytes", "termios", 9),
        ("opt", "bytes", "termios_locked", 10),
        ("opt", "bytes", "winsize", 11),
        ("opt", "bytes", "pty", 12),
        ("opt", "uint32", "dev", 13),
        ("opt", "uint32", "uid", 14),
        ("opt", "uint32", "gid", 15),
    ],
    # tty-data.img
    "tty_data_entry": [("req", "uint32", "tty_id", 1), ("req", "bytes", "data", 2)],
    # pipes-data.img / fifo-data.img: each entry is followed by `bytes` raw bytes
    "pipe_data_entry": [
        ("req", "uint32", "pipe_id", 1),
        ("req", "uint32", "bytes", 2),
        ("opt", "uint32", "size", 3),
    ],
    # sk-queues.img: each entry is followed by `length` raw bytes
    "sk_packet_entry": [("req", "uint32", "id_for", 1), ("req", "uint32", "length", 2)],
    # fs-N.img
    "fs_entry": [
        ("req", "uint32", "cwd_id", 1),
        ("req", "uint32", "root_id", 2),
        ("opt", "uint32", "umask", 3),
    ],
    # seccomp.img
    "seccomp_entry": [("rep", "seccomp_filter", "seccomp_filters", 1)],
    "seccomp_filter": [
        ("req", "bytes", "filter", 1),  # struct sock_filter[]: classic BPF
        ("opt", "uint32", "prev", 2),
        ("opt", "uint32", "flags", 3),
    ],
    # timens-N.img
    "timens_entry": [("req", "timespec", "monotonic", 1), ("req", "timespec", "boottime", 2)],
    "timespec": [("req", "uint64", "tv_sec", 1), ("req", "uint64", "tv_nsec", 2)],
    # utsns-N.img
    "utsns_entry": [("req", "string", "nodename", 1), ("req", "string", "domainname", 2)],
    # ipcns-var-N.img
    "ipc_var_entry": [
        ("rep", "uint32", "sem_ctls", 1),
        ("req", "uint32", "msg_ctlmax", 2),
        ("req", "uint32", "msg_ctlmnb", 3),
        ("req", "uint32", "msg_ctlmni", 4),
        ("req", "uint32", "auto_msgmni", 5),
        ("req", "uint64", "shm_ctlmax", 6),
        ("req", "uint64", "shm_ctlall", 7),
        ("req", "uint32", "shm_ctlmni", 8),
        ("req", "uint32", "shm_rmid_forced", 9),
        ("req", "uint32", "mq_queues_max", 10),
        ("req", "uint32", "mq_msg_max", 11),
        ("req", "uint32", "mq_msgsize_max", 12),
        ("opt", "uint32", "mq_msg_default", 13),
        ("opt", "uint32", "mq_msgsize_default", 14),
        ("opt", "uint32", "msg_next_id", 15),
        ("opt", "uint32", "sem_next_id", 16),
        ("opt", "uint32", "shm_next_id", 17),
    ],
    # mountpoints-N.img
    "mnt_entry": [
        ("req", "uint32", "fstype", 1),
        ("req", "uint32", "mnt_id", 2),
        ("req", "uint32", "root_dev", 3),
        ("req", "uint32", "parent_mnt_id", 4),
        ("req", "uint32", "flags", 5),
        ("req", "string", "root", 6),
        ("req", "string", "mountpoint", 7),
        ("req", "string", "source", 8),
        ("req", "string", "options", 9),
        ("opt", "uint32", "shared_id", 10),
        ("opt", "uint32", "master_id", 11),
        ("opt", "bool", "with_plugin", 12),
        ("opt", "bool", "ext_mount", 13),
        ("opt", "string", "fsname", 14),
        ("opt", "bool", "internal_sharing", 15),
        ("opt", "bool", "deleted", 16),
        ("opt", "uint32", "sb_flags", 17),
        ("opt", "string", "ext_key", 18),
    ],
    # cgroup.img
    "cgroup_entry": [
        ("rep", "cg_set_entry", "sets", 1),
        ("rep", "cg_controller_entry", "controllers", 2),
    ],
    "cg_set_entry": [("req", "uint32", "id", 1), ("rep", "cg_member_entry", "ctls", 2)],
    "cg_member_entry": [
        ("req", "string", "name", 1),
        ("req", "string", "path", 2),
        ("opt", "uint32", "cgns_prefix", 3),
    ],
    "cg_controller_entry": [
        ("rep", "string", "cnames", 1),
        ("rep", "bytes", "dirs", 2),  # cgroup_dir_entry trees: restored as they are
        ("opt", "bool", "is_threaded", 3),
    ],
    # stats-dump / stats-restore (service images; times in microseconds). Declared
    # optional here: read for reporting only, a missing field must not fail a migration.
    "stats_entry": [
        ("opt", "dump_stats_entry", "dump", 1),
        ("opt", "restore_stats_entry", "restore", 2),
    ],
    "dump_stats_entry": [
        ("opt", "uint32", "freezing_time", 1),
        ("opt", "uint32", "frozen_time", 2),
        ("opt", "uint32", "memdump_time", 3),
        ("opt", "uint32", "memwrite_time", 4),
        ("opt", "uint64", "pages_scanned", 5),
        ("opt", "uint64", "pages_skipped_parent", 6),
        ("opt", "uint64", "pages_written", 7),
        ("opt", "uint32", "irmap_resolve", 8),
        ("opt", "uint64", "pages_lazy", 9),
        ("opt", "uint64", "page_pipes", 10),
        ("opt", "uint64", "page_pipe_bufs", 11),
        ("opt", "uint64", "shpages_scanned", 12),
        ("opt", "uint64", "shpages_skipped_parent", 13),
        ("opt", "uint64", "shpages_written", 14),
    ],
    "restore_stats_entry": [
        ("opt", "uint64", "pages_compared", 1),
        ("opt", "uint64", "pages_skipped_cow", 2),
        ("opt", "uint32", "forking_time", 3),
        ("opt", "uint32", "restore_time", 4),
        ("opt", "uint64", "pages_restored", 5),
    ],
}


class March(enum.IntEnum):
    """core_entry.mtype: the machine the thread ran on."""

    UNKNOWN = 0
    X86_64 = 1
    ARM = 2
    AARCH64 = 3
    PPC64 = 4
    S390 = 5
    MIPS = 6
    LOONGARCH64 = 7
    RISCV64 = 8


class TaskState(enum.IntEnum):
    """task_core_entry.task_state (compel's task states)."""

    ALIVE = 0x01
    DEAD = 0x02
    STOPPED = 0x03
    ZOMBIE = 0x06


class FdType(enum.IntEnum):
    """fdinfo_entry.type / file_entry.type."""

    UND = 0
    REG = 1
    PIPE = 2
    FIFO = 3
    INETSK = 4
    UNIXSK = 5
    EVENTFD = 6
    EVENTPOLL = 7
    INOTIFY = 8
    SIGNALFD = 9
    PACKETSK = 10
    TTY = 11
    FANOTIFY = 12
    NETLINKSK = 13
    NS = 14
    TUNF = 15
    EXT = 16
    TIMERFD = 17
    MEMFD = 18
    BPFMAP = 19
    PIDFD = 20


# file_entry.type -> the file_entry field that carries it
FILE_ENTRY_FIELD = {
    FdType.REG: "reg", FdType.INETSK: "isk", FdType.NS: "nsf", FdType.PACKETSK: "psk",
    FdType.NETLINKSK: "nlsk", FdType.EVENTFD: "efd", FdType.EVENTPOLL: "epfd",
    FdType.SIGNALFD: "sgfd", FdType.TUNF: "tunf", FdType.TIMERFD: "tfd",
    FdType.INOTIFY: "ify", FdType.FANOTIFY: "ffy", FdType.EXT: "ext", FdType.UNIXSK: "usk",
    FdType.FIFO: "fifo", FdType.PIPE: "pipe", FdType.TTY: "tty", FdType.MEMFD: "memfd",
    FdType.BPFMAP: "bpf", FdType.PIDFD: "pidfd",
}


def _build_pool() -> descriptor_pool.DescriptorPool:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="hmigrate_criu.proto", package=PACKAGE, syntax="proto2"
    )
    for mname, fields in MESSAGES.items():
        msg = fdp.message_type.add(name=mname)
        for spec in fields:
            label, ftype, fname, number = spec[:4]
            field = msg.field.add(name=fname, number=number, label=_LABELS[label])
            if ftype in _SCALARS:
                field.type = _SCALARS[ftype]
            else:
                if ftype not in MESSAGES:
                    raise ValueError(f"{mname}.{fname}: unknown type {ftype}")
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                field.type_name = f".{PACKAGE}.{ftype}"
            if len(spec) > 4:
                field.default_value = spec[4]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return pool


POOL = _build_pool()
_CLASSES: dict[str, type[Message]] = {}


def message_class(name: str) -> type[Message]:
    """The generated class of one schema message, e.g. message_class("core_entry")."""
    cls = _CLASSES.get(name)
    if cls is None:
        cls = message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        _CLASSES[name] = cls
    return cls


def new(name: str, **fields: Any) -> Message:
    """A new message of schema type `name`, with fields set from keyword arguments."""
    return message_class(name)(**fields)


def parse(name: str, data: bytes) -> Message:
    msg = message_class(name)()
    msg.ParseFromString(data)
    return msg
