// SPDX-License-Identifier: GPL-2.0
/*
 * pg_noop: a module that does nothing, for the guard's reaction to module loads
 * (tests/lab/guest_guard_wake.py, bench/guard_guest.py): loaded and unloaded again and again
 * at random moments. It is out of tree and unsigned, so each load taints the kernel (O, E) and
 * the modules surface reports it; that report is what the guard's reaction is timed to.
 */
#include <linux/module.h>

static int __init pg_noop_init(void)
{
	return 0;
}

static void __exit pg_noop_exit(void)
{
}

module_init(pg_noop_init);
module_exit(pg_noop_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab: a module that does nothing");
