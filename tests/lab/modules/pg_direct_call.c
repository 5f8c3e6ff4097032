// SPDX-License-Identifier: GPL-2.0
/*
 * pg_direct_call: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_direct_call.py).
 * A direct ftrace call of its own: register_ftrace_direct() puts a CALL to code in this module
 * on a function's ftrace site, through the same direct-call ops (call_direct_funcs) that BPF
 * trampolines use. An exception that sanctioned "call_direct_funcs on vfs_read" would sanction
 * this too; patchguard must name what the call reaches instead: no BPF trampoline.
 * Harmless: the stub counts nothing and returns into the function.
 *
 *   insmod pg_direct_call.ko addr=0x<the function's address from /proc/kallsyms>
 *
 * (kallsyms_lookup_name is not exported since 5.7, so the guest script gives the address.)
 * rmmod unregisters the call.
 */
#include <linux/ftrace.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <asm/ibt.h>
#include <asm/linkage.h>

static unsigned long addr;
module_param(addr, ulong, 0444);
MODULE_PARM_DESC(addr, "the address of the function to call the stub from (its ftrace site)");

static bool registered;

extern void pg_direct_stub(void);

/* A frame and straight back: the function's own arguments are left untouched. */
asm(
"	.pushsection .text, \"ax\", @progbits\n"
"	.type pg_direct_stub, @function\n"
"	.globl pg_direct_stub\n"
"pg_direct_stub:\n"
	ASM_ENDBR
"	pushq %rbp\n"
"	movq %rsp, %rbp\n"
"	leave\n"
	ASM_RET
"	.size pg_direct_stub, .-pg_direct_stub\n"
"	.popsection\n"
);

static int __init pg_direct_call_init(void)
{
	int err;

	if (!addr)
		return -EINVAL;
	err = register_ftrace_direct(addr, (unsigned long)pg_direct_stub);
	if (err) {
		pr_err("pg_direct_call: register_ftrace_direct(%pS) failed: %d\n", (void *)addr, err);
		return err;
	}
	registered = true;
	pr_info("pg_direct_call: %pS calls %pS directly\n", (void *)addr, pg_direct_stub);
	return 0;
}

static void __exit pg_direct_call_exit(void)
{
	if (registered)
		unregister_ftrace_direct(addr, (unsigned long)pg_direct_stub);
}

module_init(pg_direct_call_init);
module_exit(pg_direct_call_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab: a direct ftrace call to code of this module");
