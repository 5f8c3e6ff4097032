"""The modules surface's name, the files it reads, its view names and the loader's allocations."""

from __future__ import annotations

from patchguard.kernel.vmallocinfo import LOADER_CALLERS as LOADER_CALLERS

NAME = "modules"
ROOTKIT = "T1014"
MODULE_LOAD = "T1547.006"

SYS_MODULE = "/sys/module"
KALLSYMS = "/proc/kallsyms"
VMALLOCINFO = "/proc/vmallocinfo"
OSRELEASE = "/proc/sys/kernel/osrelease"
NO_MODULE_SUPPORT = "this kernel has no loadable module support (/proc/modules absent)"

# The views that list every loaded module, and the partial one that names only modules that
# called vmalloc (its caller column prints "func+off/size [module]").
PROC_VIEW = "proc_modules"
SYSFS_VIEW = "sysfs"
KALLSYMS_VIEW = "kallsyms"
VMALLOC_CALLER_VIEW = "vmalloc_callers"

# Symbols only a kernel with a module loader has (kernel/module/ is built only with
# CONFIG_MODULES; the init_module syscalls exist either way, as weak -ENOSYS stubs).
LOADER_SYMBOLS = ("load_module", "do_init_module")

# Allocations one live module holds: its core before 6.4 (the init area is freed once it is
# live: found in the lab, where 2 let a hidden module's area pass); one per mod_mem_type from
# 6.4 (text, data, rodata, ro_after_init, and the three init ones while it initialises).
# A module still loading holds one more before 6.4 (its init area).
AREAS_PER_MODULE_OLD = 1
AREAS_PER_MODULE = 7

# Sections the loader puts in a module's init memory, freed once the module is live: the
# .init ones, and the whole symbol and string tables (the core keeps a copy of the part
# kallsyms needs). /sys/module/<name>/sections still prints where they were, which later
# modules reuse: in the lab 9pnet's .strtab pointed into the area of a module hidden after it.
INIT_SECTIONS = (".init", ".symtab", ".strtab")
