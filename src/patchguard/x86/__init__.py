"""Pure x86-64 decoding: the instructions Linux patches into its own text and the tables that
record where (insn.py), and the syscall dispatch switch compiled into x64_sys_call
(dispatch.py). Nothing here reads the kernel: bytes and symbol lookups come in as arguments."""
