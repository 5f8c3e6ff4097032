// SPDX-License-Identifier: GPL-2.0
/*
 * pg_kprobe_hook: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_function_hooks.py).
 * Kprobes on a credential function, the way rootkits watch (or, from a pre_handler, change)
 * privilege changes. Harmless: the pre_handlers only count.
 *
 *   insmod pg_kprobe_hook.ko [func=commit_creds] [offset=N]
 *
 * Two probes: one at func+0, the function's ftrace site (a kprobe there goes through ftrace:
 * kprobes/list flags it [FTRACE]); and, if offset is not 0, one at func+offset, which must be
 * an instruction boundary past that site: the kernel writes an INT3 there (or, once it
 * optimizes the probe, a JMP to an optprobe trampoline). rmmod unregisters both.
 */
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

static char *func = "commit_creds";
module_param(func, charp, 0444);
MODULE_PARM_DESC(func, "the function to probe");
static uint offset;
module_param(offset, uint, 0444);
MODULE_PARM_DESC(offset, "an instruction boundary in func past its ftrace site (0: none)");

static unsigned long entry_hits, body_hits;
module_param(entry_hits, ulong, 0444);
module_param(body_hits, ulong, 0444);

static int pg_kprobe_entry(struct kprobe *p, struct pt_regs *regs)
{
	WRITE_ONCE(entry_hits, READ_ONCE(entry_hits) + 1);
	return 0;
}

static int pg_kprobe_body(struct kprobe *p, struct pt_regs *regs)
{
	WRITE_ONCE(body_hits, READ_ONCE(body_hits) + 1);
	return 0;
}

static struct kprobe kp_entry = { .pre_handler = pg_kprobe_entry };
static struct kprobe kp_body = { .pre_handler = pg_kprobe_body };
static bool entry_on, body_on;

static int __init pg_kprobe_hook_init(void)
{
	int err;

	if (!func || !*func)
		return -EINVAL;
	kp_entry.symbol_name = func;
	err = register_kprobe(&kp_entry);
	if (err) {
		pr_err("pg_kprobe_hook: register_kprobe(%s) failed: %d\n", func, err);
		return err;
	}
	entry_on = true;
	if (offset) {
		kp_body.symbol_name = func;
		kp_body.offset = offset;
		err = register_kprobe(&kp_body);
		if (err) {
			pr_err("pg_kprobe_hook: register_kprobe(%s+%#x) failed: %d\n", func, offset,
			       err);
			unregister_kprobe(&kp_entry);
			return err;
		}
		body_on = true;
	}
	pr_info("pg_kprobe_hook: probes on %s at %px and %px\n", func, kp_entry.addr,
		body_on ? kp_body.addr : NULL);
	return 0;
}

static void __exit pg_kprobe_hook_exit(void)
{
	if (body_on)
		unregister_kprobe(&kp_body);
	if (entry_on)
		unregister_kprobe(&kp_entry);
	pr_info("pg_kprobe_hook: probes removed\n");
}

module_init(pg_kprobe_hook_init);
module_exit(pg_kprobe_hook_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: kprobes on a credential function");
