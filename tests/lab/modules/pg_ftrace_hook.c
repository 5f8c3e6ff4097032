// SPDX-License-Identifier: GPL-2.0
/*
 * pg_ftrace_hook: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_function_hooks.py).
 * The method of modern LKM rootkits: an ftrace_ops with IPMODIFY and SAVE_REGS on a syscall
 * function, whose callback could set regs->ip to a replacement and so take the function over.
 * This one is harmless: the callback counts the calls and leaves the ip alone.
 *
 *   insmod pg_ftrace_hook.ko [func=__x64_sys_getdents64]
 *
 * The callback's address is in this module, so enabled_functions names it as the owner
 * ("pg_ftrace_callback+0x0/0x.. [pg_ftrace_hook]"). rmmod unregisters the ops.
 */
#include <linux/ftrace.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>

static char *func = "__x64_sys_getdents64";
module_param(func, charp, 0444);
MODULE_PARM_DESC(func, "the function to hook (an ftrace-able kernel function)");

static unsigned long calls;
module_param(calls, ulong, 0444);
MODULE_PARM_DESC(calls, "how many calls the callback saw");

static bool registered;

static void notrace pg_ftrace_callback(unsigned long ip, unsigned long parent_ip,
				       struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	/* A rootkit would write its replacement's address here: regs->ip = (unsigned long)hook.
	 * This one leaves the ip unchanged, so the original function runs as before. */
	WRITE_ONCE(calls, READ_ONCE(calls) + 1);
}

static struct ftrace_ops pg_ops = {
	.func = pg_ftrace_callback,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY,
};

static int __init pg_ftrace_hook_init(void)
{
	int err;

	if (!func || !*func)
		return -EINVAL;
	err = ftrace_set_filter(&pg_ops, func, strlen(func), 0);
	if (err) {
		pr_err("pg_ftrace_hook: ftrace_set_filter(%s) failed: %d\n", func, err);
		return err;
	}
	err = register_ftrace_function(&pg_ops);
	if (err) {
		pr_err("pg_ftrace_hook: register_ftrace_function failed: %d\n", err);
		ftrace_free_filter(&pg_ops);
		return err;
	}
	registered = true;
	pr_info("pg_ftrace_hook: %s hooked by %ps (IPMODIFY)\n", func, pg_ftrace_callback);
	return 0;
}

static void __exit pg_ftrace_hook_exit(void)
{
	if (registered)
		unregister_ftrace_function(&pg_ops);
	ftrace_free_filter(&pg_ops);
	pr_info("pg_ftrace_hook: %s unhooked\n", func);
}

module_init(pg_ftrace_hook_init);
module_exit(pg_ftrace_hook_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: ftrace IPMODIFY hook on a syscall function");
