// SPDX-License-Identifier: GPL-2.0
/*
 * pg_lstar: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_hiding_and_entry.py).
 * The oldest syscall hook of all: MSR_LSTAR, where the CPU jumps on every SYSCALL
 * instruction, is pointed on every CPU at a trampoline in this module, which jumps on to the
 * kernel's entry_SYSCALL_64 (a rootkit would run its own code first). rmmod puts the original
 * value back on every CPU.
 *
 * The trampoline runs before the kernel's entry code has switched to kernel page tables: it
 * only works where page-table isolation is off (the lab's TCG CPU is not affected by
 * Meltdown, so PTI is off); the module refuses to load otherwise rather than kill the guest.
 */
#include <linux/cpu.h>
#include <linux/module.h>
#include <linux/smp.h>
#include <asm/cpufeature.h>
#include <asm/msr.h>

void pg_lstar_entry(void);
unsigned long pg_lstar_real;

/* No stack, no registers: user RSP and every user register are still live here. */
asm(".pushsection .text\n"
    ".globl pg_lstar_entry\n"
    ".type pg_lstar_entry, @function\n"
    "pg_lstar_entry:\n"
    "	jmp *pg_lstar_real(%rip)\n"
    ".size pg_lstar_entry, .-pg_lstar_entry\n"
    ".popsection\n");

static void pg_lstar_set(void *value)
{
	wrmsrl(MSR_LSTAR, (unsigned long)value);
}

static int __init pg_lstar_init(void)
{
	if (boot_cpu_has(X86_FEATURE_PTI)) {
		pr_err("pg_lstar: page-table isolation is on: the trampoline would not be mapped\n");
		return -EOPNOTSUPP;
	}
	rdmsrl(MSR_LSTAR, pg_lstar_real);
	cpus_read_lock();
	on_each_cpu(pg_lstar_set, pg_lstar_entry, 1);
	cpus_read_unlock();
	pr_info("pg_lstar: MSR_LSTAR -> %ps (was %ps)\n", pg_lstar_entry, (void *)pg_lstar_real);
	return 0;
}

static void __exit pg_lstar_exit(void)
{
	cpus_read_lock();
	on_each_cpu(pg_lstar_set, (void *)pg_lstar_real, 1);
	cpus_read_unlock();
}

module_init(pg_lstar_init);
module_exit(pg_lstar_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: MSR_LSTAR redirected to a module trampoline");
