// SPDX-License-Identifier: GPL-2.0
/*
 * pg_sysfs_removed: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_ftrace_ops.py).
 * It takes its kobject out of sysfs (kobject_del: /sys/module/pg_sysfs_removed is gone, even
 * by name) and stays on the kernel's module list: what pg_mod_hide's listing filter must be
 * told apart from.
 *
 * It cannot be unloaded afterwards: load it only in a throwaway guest, last.
 */
#include <linux/kobject.h>
#include <linux/module.h>

static int __init pg_sysfs_removed_init(void)
{
	struct module *me = THIS_MODULE;

	if (!me->mkobj.kobj.state_in_sysfs)
		return -EINVAL;
	kobject_del(&me->mkobj.kobj);
	pr_info("pg_sysfs_removed: kobject removed from sysfs\n");
	return 0;
}

module_init(pg_sysfs_removed_init);
/* No module_exit: its kobject is gone, it is never unloaded. */
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: a module whose sysfs kobject is removed");
