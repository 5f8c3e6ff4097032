// SPDX-License-Identifier: GPL-2.0
/*
 * pg_direct_call: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_direct_call.py).
 * A direct ftrace call of its own: register_ftrace_direct() puts a CALL to code in this module
 * on a function's ftrace site, through the same direct-call ops (call_direct_funcs) that BPF
 * trampolines use. An exception that sanctioned "call_direct_funcs on vfs_read" would sanction
 * this too; patchguard must name what the call reaches instead: no BPF trampoline.
 * Harmless: the stubs count nothing and return into the function.
 *
 *   insmod pg_direct_call.ko addr=0x<the function's address from /proc/kallsyms> [shared=1 [swap=1]]
 *
 * (kallsyms_lookup_name is not exported since 5.7, so the guest script gives the address.)
 * On 6.6+ a direct ops holds its own direct_call, and call_direct_funcs() jumps there whenever
 * the site goes through the ops list, which it does once another ftrace user shares it:
 * shared=1 registers a plain ftrace_ops with a no-op handler on the same function; swap=1 then
 * rewrites the direct ops' direct_call to a second stub and leaves ftrace's direct_functions
 * hash (what the site's own record and every listing say) on the first: a data-only redirect.
 * Both are refused before 6.6 (no direct_call there). rmmod undoes everything.
 */
#include <linux/ftrace.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/version.h>
#include <asm/ibt.h>
#include <asm/linkage.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 6, 0)
#include <asm/nospec-branch.h>
#define PG_DIRECT_OPS 1		/* register_ftrace_direct(ops, addr); ops->direct_call */
#define PG_DEPTH CALL_DEPTH_ACCOUNT	/* the RSB depth count a CALL into the stub owes */
#else
#define PG_DIRECT_OPS 0		/* register_ftrace_direct(ip, addr) */
#define PG_DEPTH ""
#endif

static unsigned long addr;
module_param(addr, ulong, 0444);
MODULE_PARM_DESC(addr, "the address of the function to call the stub from (its ftrace site)");
static bool shared;
module_param(shared, bool, 0444);
MODULE_PARM_DESC(shared, "6.6+: also a plain ftrace_ops on the function (the site then goes through call_direct_funcs)");
static bool swap;
module_param(swap, bool, 0444);
MODULE_PARM_DESC(swap, "6.6+: then point the direct ops' direct_call at pg_direct_stub2 behind direct_functions");

static bool registered;

/* How many calls each stub took: where the function's calls really land (read as parameters). */
unsigned long pg_stub_calls, pg_stub2_calls;
module_param_named(stub_calls, pg_stub_calls, ulong, 0444);
module_param_named(stub2_calls, pg_stub2_calls, ulong, 0444);

extern void pg_direct_stub(void);
extern void pg_direct_stub2(void);

/* Two stubs, each a count, a frame and straight back: the function's own arguments are left
 * untouched (only the flags change, which no function expects at its entry). */
#define PG_STUB(name, counter)				\
	"	.type " name ", @function\n"		\
	"	.globl " name "\n"			\
	name ":\n"					\
	ASM_ENDBR					\
	"	lock incq " counter "(%rip)\n"		\
	"	pushq %rbp\n"				\
	"	movq %rsp, %rbp\n"			\
	PG_DEPTH					\
	"	leave\n"				\
	ASM_RET						\
	"	.size " name ", .-" name "\n"

asm(
"	.pushsection .text, \"ax\", @progbits\n"
PG_STUB("pg_direct_stub", "pg_stub_calls")
PG_STUB("pg_direct_stub2", "pg_stub2_calls")
"	.popsection\n"
);

#if PG_DIRECT_OPS
static struct ftrace_ops direct_ops;

/* The plain ftrace user that shares the site: it does nothing, its presence is the point. */
static void pg_noop(unsigned long ip, unsigned long parent_ip, struct ftrace_ops *op,
		    struct ftrace_regs *fregs)
{
}

static struct ftrace_ops plain_ops = { .func = pg_noop };
static bool plain_registered;

static int pg_register(void)
{
	int err = ftrace_set_filter_ip(&direct_ops, addr, 0, 0);

	if (!err)
		err = register_ftrace_direct(&direct_ops, (unsigned long)pg_direct_stub);
	if (err)
		return err;
	registered = true;
	if (!shared)
		return 0;
	err = ftrace_set_filter_ip(&plain_ops, addr, 0, 0);
	if (!err)
		err = register_ftrace_function(&plain_ops);
	if (err)
		return err;
	plain_registered = true;
	if (swap)  /* what modify_ftrace_direct() would also write into direct_functions */
		WRITE_ONCE(direct_ops.direct_call, (unsigned long)pg_direct_stub2);
	return 0;
}

static void pg_unregister(void)
{
	if (plain_registered)
		unregister_ftrace_function(&plain_ops);
	if (shared)
		ftrace_free_filter(&plain_ops);
	/* back to what direct_functions records, so unregistering finds its entry */
	WRITE_ONCE(direct_ops.direct_call, (unsigned long)pg_direct_stub);
	if (registered)
		unregister_ftrace_direct(&direct_ops, (unsigned long)pg_direct_stub, true);
	else
		ftrace_free_filter(&direct_ops);
}
#else
static int pg_register(void)
{
	int err;

	if (shared || swap)
		return -EOPNOTSUPP;  /* before 6.6 a direct ops has no direct_call of its own */
	err = register_ftrace_direct(addr, (unsigned long)pg_direct_stub);
	registered = !err;
	return err;
}

static void pg_unregister(void)
{
	if (registered)
		unregister_ftrace_direct(addr, (unsigned long)pg_direct_stub);
}
#endif

static int __init pg_direct_call_init(void)
{
	int err;

	if (!addr)
		return -EINVAL;
	err = pg_register();
	if (err) {
		pr_err("pg_direct_call: direct call on %pS failed: %d\n", (void *)addr, err);
		pg_unregister();
		return err;
	}
	pr_info("pg_direct_call: %pS calls %pS directly%s%s\n", (void *)addr, pg_direct_stub,
		shared ? ", shared with a plain ftrace_ops" : "",
		swap ? ", direct_call now pg_direct_stub2" : "");
	return 0;
}

static void __exit pg_direct_call_exit(void)
{
	pg_unregister();
}

module_init(pg_direct_call_init);
module_exit(pg_direct_call_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab: a direct ftrace call to code of this module");
