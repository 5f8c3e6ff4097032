"""The bpf(2) family: the syscall itself through ctypes (syscall.py), instruction encoding
(insn.py), object enumeration (objects.py) and their owners (owners.py), iterators
(iterators.py), and the BPF programs patchguard runs to ask the kernel itself: the memory
reader (reader.py), symbol lookups (lookup.py) and %pS naming (symbolize.py)."""
