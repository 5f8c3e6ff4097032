// SPDX-License-Identifier: GPL-2.0
/*
 * pg_taint_clear: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_taint_cleared.py).
 * Rootkits seen in the wild set the kernel's taint flags back to 0 once their unsigned,
 * out-of-tree code is in, so that /proc/sys/kernel/tainted says the kernel is clean. This
 * module does the same: the loader tainted the kernel O and E before its init ran; init writes
 * 0 over tainted_mask. Its own struct module keeps its taints: that is what patchguard compares.
 *
 *   mask=<address of tainted_mask> (a data symbol: Debian's kernels list it in kallsyms)
 */
#include <linux/errno.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

#define KERNEL_MIN 0xffffffff80000000UL

static unsigned long mask;
module_param(mask, ulong, 0444);
MODULE_PARM_DESC(mask, "address of tainted_mask");
static unsigned long was;
module_param(was, ulong, 0444);
MODULE_PARM_DESC(was, "the taint it cleared");

static int __init pg_taint_clear_init(void)
{
	if (mask < KERNEL_MIN)
		return -EINVAL;
	was = READ_ONCE(*(unsigned long *)mask);
	WRITE_ONCE(*(unsigned long *)mask, 0);
	pr_info("pg_taint_clear: tainted_mask %#lx -> 0\n", was);
	return 0;
}

static void __exit pg_taint_clear_exit(void)
{
}

module_init(pg_taint_clear_init);
module_exit(pg_taint_clear_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: the kernel's taint flags cleared");
