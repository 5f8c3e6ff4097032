// SPDX-License-Identifier: GPL-2.0
/*
 * pg_khook: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_khook.py), hooking
 * the way khook-style rootkits do: the 5-byte JMP written over a function's entry goes not
 * into the module but into a stub in memory the rootkit allocated itself, which no module
 * owns, and the stub jumps on (jmp *[rip]) to the hook. Whoever names the JMP's target by
 * the nearest kallsyms symbol blames whichever module happens to lie below the stub.
 *
 *   target=<address of a seq_file show function>, e.g. version_proc_show (/proc/version)
 *   alloc=<address of module_alloc>, set_x=<address of set_memory_x> (neither is exported)
 *
 * As pg_inline_hook: the hook counts its calls and runs the original (target+5, +9 after
 * ENDBR64); rmmod writes the NOP5 back. The stub's page is left allocated (module_memfree is
 * not exported either; the lab guest is thrown away after the run).
 */
#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/errno.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/rcupdate.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>

#include "pg_patch.h"

#define KERNEL_MIN 0xffffffff80000000UL

typedef int (*pg_show_t)(struct seq_file *, void *);
typedef void *(*pg_alloc_t)(unsigned long size);
typedef int (*pg_set_x_t)(unsigned long addr, int numpages);

static const u8 nop5[5] = { 0x0f, 0x1f, 0x44, 0x00, 0x00 };
static const u8 endbr64[4] = { 0xf3, 0x0f, 0x1e, 0xfa };

static unsigned long target, alloc, set_x;
module_param(target, ulong, 0444);
module_param(alloc, ulong, 0444);
module_param(set_x, ulong, 0444);
static unsigned long calls, stub_address;
module_param(calls, ulong, 0444);
MODULE_PARM_DESC(calls, "calls that went through the hook");
module_param(stub_address, ulong, 0444);
MODULE_PARM_DESC(stub_address, "where the stub the entry JMP goes to lies");

static unsigned long site;
static pg_show_t orig_body;
static bool hooked;
static atomic_t inflight = ATOMIC_INIT(0);

static noinline int pg_khook_show(struct seq_file *m, void *v)
{
	int ret;

	atomic_inc(&inflight);
	WRITE_ONCE(calls, READ_ONCE(calls) + 1);
	ret = orig_body(m, v);
	atomic_dec(&inflight);
	return ret;
}

static int __init pg_khook_init(void)
{
	u8 head[9], jmp[5] = { 0xe9 };
	u8 *stub;
	unsigned long hook = (unsigned long)pg_khook_show;
	s32 rel;

	if (target < KERNEL_MIN || alloc < KERNEL_MIN || set_x < KERNEL_MIN ||
	    copy_from_kernel_nofault(head, (const void *)target, 9)) {
		pr_err("pg_khook: target, alloc and set_x must be kernel addresses\n");
		return -EINVAL;
	}
	site = target + (memcmp(head, endbr64, 4) ? 0 : 4);
	if (memcmp(head + (site - target), nop5, 5)) {
		pr_err("pg_khook: %ps does not start with an idle ftrace NOP5\n", (void *)target);
		return -EINVAL;
	}
	stub = ((pg_alloc_t)alloc)(PAGE_SIZE);
	if (!stub)
		return -ENOMEM;
	/* jmp *0(%rip); .quad pg_khook_show */
	stub[0] = 0xff;
	stub[1] = 0x25;
	memset(stub + 2, 0, 4);
	memcpy(stub + 6, &hook, 8);
	((pg_set_x_t)set_x)((unsigned long)stub, 1);
	if (!pg_rel32(site, 5, (unsigned long)stub, &rel))
		return -ERANGE;
	memcpy(jmp + 1, &rel, 4);
	orig_body = (pg_show_t)(site + 5);
	stub_address = (unsigned long)stub;
	pg_patch((void *)site, jmp, 5);
	hooked = true;
	pr_info("pg_khook: %ps now jumps to a stub at %px\n", (void *)site, stub);
	return 0;
}

static void __exit pg_khook_exit(void)
{
	if (hooked)
		pg_patch((void *)site, nop5, 5);
	while (atomic_read(&inflight))
		msleep(10);
	synchronize_rcu_tasks();
	pr_info("pg_khook: restored\n");
}

module_init(pg_khook_init);
module_exit(pg_khook_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: khook-style entry JMP into a stub of no module");
