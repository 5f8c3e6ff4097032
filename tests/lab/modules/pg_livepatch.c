// SPDX-License-Identifier: GPL-2.0
/*
 * pg_livepatch: the legitimate side of patchguard's kernel lab (tests/lab/test_lab_function_hooks.py).
 * A minimal live patch through the kernel's livepatch API, after samples/livepatch/
 * livepatch-sample.c: cmdline_proc_show (/proc/cmdline) replaced by a function that prints a
 * fixed line. patchguard must explain the patched function's ftrace site, never call it
 * tampering.
 *
 * Unloading: echo 0 > /sys/kernel/livepatch/pg_livepatch/enabled, wait for the transition
 * (/sys/kernel/livepatch/pg_livepatch/transition reads 0), then rmmod.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int pg_livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "patchguard lab livepatch\n");
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = pg_livepatch_cmdline_proc_show,
	},
	{}
};

static struct klp_object objs[] = {
	{
		/* name NULL: vmlinux */
		.funcs = funcs,
	},
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init pg_livepatch_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit pg_livepatch_exit(void)
{
}

module_init(pg_livepatch_init);
module_exit(pg_livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("patchguard lab: a minimal livepatch of cmdline_proc_show");
