// SPDX-License-Identifier: GPL-2.0
/*
 * pg_syscall_hook: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_code_patching.py).
 * It hooks system calls both ways LKM rootkits do, harmlessly: every hook counts its calls and
 * calls the original.
 *
 *  (a) sys_call_table: the entries of kill (62) and getdents64 (217) replaced, written with
 *      CR0.WP cleared (pg_patch.h). Kernels that dispatch through x64_sys_call (6.9+, and
 *      Debian's 6.1.85+) no longer read the table, so these hooks are never called there; the
 *      changed table is still tampering.
 *  (b) x64_sys_call: the rel32 of its `jmp __x64_sys_kill` retargeted to pg_x64_kill. This one
 *      takes effect on those kernels: x64_kill_calls counts the kill(2) calls it sees.
 *
 * The addresses are parameters (the test reads them from /proc/kallsyms in the guest):
 *   table=<sys_call_table>  x64_kill_jmp=<the jmp in x64_sys_call>  sys_kill=<__x64_sys_kill>
 * Either of table and x64_kill_jmp may be left out. sys_kill, if given, must be where both
 * lead now, or the module refuses to load. rmmod restores everything.
 */
#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/errno.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/rcupdate.h>
#include <linux/uaccess.h>
#include <asm/ptrace.h>

#include "pg_patch.h"

#define NR_KILL 62
#define NR_GETDENTS64 217
#define KERNEL_MIN 0xffffffff80000000UL /* the kernel image's mapping */

typedef long (*pg_syscall_t)(const struct pt_regs *);

static unsigned long table;
module_param(table, ulong, 0444);
MODULE_PARM_DESC(table, "address of sys_call_table (0: leave the table alone)");
static unsigned long x64_kill_jmp;
module_param(x64_kill_jmp, ulong, 0444);
MODULE_PARM_DESC(x64_kill_jmp, "address of the 5-byte `jmp __x64_sys_kill` in x64_sys_call");
static unsigned long sys_kill;
module_param(sys_kill, ulong, 0444);
MODULE_PARM_DESC(sys_kill, "address of __x64_sys_kill, checked before anything is written");

static unsigned long x64_kill_calls, table_kill_calls, table_getdents64_calls;
module_param(x64_kill_calls, ulong, 0444);
module_param(table_kill_calls, ulong, 0444);
module_param(table_getdents64_calls, ulong, 0444);

static pg_syscall_t orig_x64_kill, orig_table_kill, orig_table_getdents64;
static unsigned long saved_table[2]; /* kill, getdents64 */
static bool table_hooked;
static s32 saved_rel;
static bool x64_hooked;
static atomic_t inflight = ATOMIC_INIT(0);

static long pg_call(pg_syscall_t orig, unsigned long *counter, const struct pt_regs *regs)
{
	long ret;

	atomic_inc(&inflight);
	WRITE_ONCE(*counter, READ_ONCE(*counter) + 1);
	ret = orig(regs);
	atomic_dec(&inflight);
	return ret;
}

static noinline long pg_x64_kill(const struct pt_regs *regs)
{
	return pg_call(orig_x64_kill, &x64_kill_calls, regs);
}

static noinline long pg_table_kill(const struct pt_regs *regs)
{
	return pg_call(orig_table_kill, &table_kill_calls, regs);
}

static noinline long pg_table_getdents64(const struct pt_regs *regs)
{
	return pg_call(orig_table_getdents64, &table_getdents64_calls, regs);
}

static int read_kernel(void *dst, unsigned long src, size_t len)
{
	if (src < KERNEL_MIN || copy_from_kernel_nofault(dst, (const void *)src, len))
		return -EFAULT;
	return 0;
}

static int hook_table(void)
{
	unsigned long *slots = (unsigned long *)table;
	unsigned long entries[2], hooks[2] = {
		(unsigned long)pg_table_kill, (unsigned long)pg_table_getdents64,
	};
	int i, nr[2] = { NR_KILL, NR_GETDENTS64 };

	for (i = 0; i < 2; i++) {
		if (read_kernel(&entries[i], table + 8 * nr[i], 8) || entries[i] < KERNEL_MIN) {
			pr_err("pg_syscall_hook: sys_call_table[%d] at %#lx is not a kernel pointer\n",
			       nr[i], table + 8 * nr[i]);
			return -EINVAL;
		}
	}
	if (sys_kill && entries[0] != sys_kill) {
		pr_err("pg_syscall_hook: sys_call_table[62] is %#lx, not sys_kill %#lx\n",
		       entries[0], sys_kill);
		return -EINVAL;
	}
	orig_table_kill = (pg_syscall_t)entries[0];
	orig_table_getdents64 = (pg_syscall_t)entries[1];
	for (i = 0; i < 2; i++) {
		saved_table[i] = entries[i];
		pg_patch(&slots[nr[i]], &hooks[i], 8);
	}
	table_hooked = true;
	pr_info("pg_syscall_hook: sys_call_table[62] -> %ps, [217] -> %ps\n",
		(void *)hooks[0], (void *)hooks[1]);
	return 0;
}

static int hook_x64_sys_call(void)
{
	u8 insn[5];
	s32 rel;
	unsigned long dest;

	if (read_kernel(insn, x64_kill_jmp, sizeof(insn)) || insn[0] != 0xe9) {
		pr_err("pg_syscall_hook: no jmp rel32 at %#lx (%5ph)\n", x64_kill_jmp, insn);
		return -EINVAL;
	}
	memcpy(&saved_rel, insn + 1, 4);
	dest = x64_kill_jmp + 5 + (long)saved_rel;
	if (sys_kill && dest != sys_kill) {
		pr_err("pg_syscall_hook: the jmp at %#lx goes to %ps, not sys_kill %#lx\n",
		       x64_kill_jmp, (void *)dest, sys_kill);
		return -EINVAL;
	}
	if (!pg_rel32(x64_kill_jmp, 5, (unsigned long)pg_x64_kill, &rel))
		return -ERANGE;
	orig_x64_kill = (pg_syscall_t)dest;
	pg_patch((void *)(x64_kill_jmp + 1), &rel, 4);
	x64_hooked = true;
	pr_info("pg_syscall_hook: x64_sys_call jmp at %#lx: %ps -> %ps\n", x64_kill_jmp,
		(void *)dest, pg_x64_kill);
	return 0;
}

static void unhook(void)
{
	int i, nr[2] = { NR_KILL, NR_GETDENTS64 };

	if (x64_hooked)
		pg_patch((void *)(x64_kill_jmp + 1), &saved_rel, 4);
	if (table_hooked)
		for (i = 0; i < 2; i++)
			pg_patch((unsigned long *)table + nr[i], &saved_table[i], 8);
	x64_hooked = table_hooked = false;
	/* Nothing enters the hooks now; wait for whoever is still inside one, and for every task
	 * to pass a voluntary switch (none is left between a jump and the counter). */
	while (atomic_read(&inflight))
		msleep(10);
	synchronize_rcu_tasks();
}

static int __init pg_syscall_hook_init(void)
{
	int err = 0;

	if (!table && !x64_kill_jmp) {
		pr_err("pg_syscall_hook: give table=, x64_kill_jmp= or both\n");
		return -EINVAL;
	}
	if (table)
		err = hook_table();
	if (!err && x64_kill_jmp)
		err = hook_x64_sys_call();
	if (err)
		unhook();
	return err;
}

static void __exit pg_syscall_hook_exit(void)
{
	unhook();
	pr_info("pg_syscall_hook: restored\n");
}

module_init(pg_syscall_hook_init);
module_exit(pg_syscall_hook_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: sys_call_table and x64_sys_call syscall hooks");
