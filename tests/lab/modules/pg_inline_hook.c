// SPDX-License-Identifier: GPL-2.0
/*
 * pg_inline_hook: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_code_patching.py).
 * It writes a 5-byte JMP (e9 rel32) over the first bytes of a kernel function, the oldest
 * hooking technique there is, harmlessly: the hook counts its calls and runs the original.
 *
 *   target=<address of a seq_file show function>, e.g. version_proc_show (/proc/version)
 *
 * Where the JMP goes: the function's first 5 bytes (after ENDBR64 on IBT kernels) are its
 * ftrace site, a NOP5 while nobody traces it. The module refuses a function that does not
 * start so. Overwriting a NOP loses nothing, so the original is the code right after it:
 * pg_inline_show() calls target+5 (+9 after ENDBR64) with the same arguments, and the stack is
 * as it would have been. (On a kernel that enforces IBT that indirect call would need an ENDBR
 * at target+5: not an issue on Debian's 6.1, built without CONFIG_X86_KERNEL_IBT.)
 * rmmod writes the NOP5 back.
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

static const u8 nop5[5] = { 0x0f, 0x1f, 0x44, 0x00, 0x00 };
static const u8 endbr64[4] = { 0xf3, 0x0f, 0x1e, 0xfa };

static unsigned long target;
module_param(target, ulong, 0444);
MODULE_PARM_DESC(target, "address of a seq_file show function to hook (e.g. version_proc_show)");
static unsigned long calls;
module_param(calls, ulong, 0444);
MODULE_PARM_DESC(calls, "calls that went through the hook");

static unsigned long site;
static pg_show_t orig_body;
static bool hooked;
static atomic_t inflight = ATOMIC_INIT(0);

static noinline int pg_inline_show(struct seq_file *m, void *v)
{
	int ret;

	atomic_inc(&inflight);
	WRITE_ONCE(calls, READ_ONCE(calls) + 1);
	ret = orig_body(m, v);
	atomic_dec(&inflight);
	return ret;
}

static int __init pg_inline_hook_init(void)
{
	u8 head[9], jmp[5] = { 0xe9 };
	s32 rel;

	if (target < KERNEL_MIN || copy_from_kernel_nofault(head, (const void *)target, 9)) {
		pr_err("pg_inline_hook: target=%#lx is not readable kernel text\n", target);
		return -EINVAL;
	}
	site = target + (memcmp(head, endbr64, 4) ? 0 : 4);
	if (memcmp(head + (site - target), nop5, 5)) {
		pr_err("pg_inline_hook: %ps does not start with an idle ftrace NOP5 (%9ph)\n",
		       (void *)target, head);
		return -EINVAL;
	}
	if (!pg_rel32(site, 5, (unsigned long)pg_inline_show, &rel))
		return -ERANGE;
	memcpy(jmp + 1, &rel, 4);
	orig_body = (pg_show_t)(site + 5);
	pg_patch((void *)site, jmp, 5);
	hooked = true;
	pr_info("pg_inline_hook: %ps now jumps to %ps\n", (void *)site, pg_inline_show);
	return 0;
}

static void __exit pg_inline_hook_exit(void)
{
	if (hooked)
		pg_patch((void *)site, nop5, 5);
	while (atomic_read(&inflight))
		msleep(10);
	synchronize_rcu_tasks();
	pr_info("pg_inline_hook: restored\n");
}

module_init(pg_inline_hook_init);
module_exit(pg_inline_hook_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: inline JMP hook over a kernel function's entry");
