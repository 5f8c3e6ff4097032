// SPDX-License-Identifier: GPL-2.0
/*
 * pg_klp_version: the truth corpus's livepatch member (tests/live/test_corpus_live.py, run in
 * the lab by tests/lab/test_lab_corpus.py), a live patch as a distribution would ship a fix:
 * version_proc_show (/proc/version) replaced through the kernel's livepatch API by one that
 * still names the kernel's release and build but no longer the build host and compiler
 * (linux_proc_banner's "(user@host) (gcc ...)"). Declared by the shipped manifest
 * src/patchguard/policy/manifests/klp-version.toml.
 *
 * Unloading: echo 0 > /sys/kernel/livepatch/pg_klp_version/enabled, wait until its transition
 * reads 0, then rmmod.
 */
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>

static int pg_klp_version_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s version %s %s\n", utsname()->sysname, utsname()->release,
		   utsname()->version);
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "version_proc_show",
		.new_func = pg_klp_version_proc_show,
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

static int __init pg_klp_version_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit pg_klp_version_exit(void)
{
}

module_init(pg_klp_version_init);
module_exit(pg_klp_version_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("patchguard corpus: /proc/version without the build host, live-patched");
