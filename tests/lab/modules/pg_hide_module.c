// SPDX-License-Identifier: GPL-2.0
/*
 * pg_hide_module: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_function_hooks.py).
 * It hides itself the way LKM rootkits do: off the module list (list_del(&THIS_MODULE->list):
 * gone from /proc/modules, lsmod and the module symbols of /proc/kallsyms) and out of sysfs
 * (kobject_del of its kobject: gone from /sys/module). It does nothing else, but it keeps a
 * small buffer allocated with vmalloc from its own code, as rootkits keep their state: its
 * /proc/vmallocinfo line names the module as the caller.
 *
 * It cannot be unloaded afterwards (delete_module no longer finds it): load it only in a
 * throwaway guest. It refuses to load if the module is not on a list or not in sysfs.
 */
#include <linux/kobject.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/vmalloc.h>

static void *state;

/* Not inlined into the init function (whose text is freed) and not a tail call: the
 * allocation's caller, which vmallocinfo prints with %pS, is this function's text. */
static noinline int pg_hide_alloc(void)
{
	state = vmalloc(PAGE_SIZE);
	return state ? 0 : -ENOMEM;
}

static int __init pg_hide_module_init(void)
{
	struct module *me = THIS_MODULE;

	if (list_empty(&me->list) || !me->mkobj.kobj.state_in_sysfs) {
		pr_err("pg_hide_module: not on the module list or not in sysfs: refusing\n");
		return -EINVAL;
	}
	if (pg_hide_alloc())
		return -ENOMEM;
	list_del(&me->list);
	kobject_del(&me->mkobj.kobj);
	pr_info("pg_hide_module: hidden (module list and sysfs)\n");
	return 0;
}

module_init(pg_hide_module_init);
/* No module_exit: a module that hides itself is never unloaded. */
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: a self-hiding module");
