// SPDX-License-Identifier: GPL-2.0
/*
 * pg_tp_probe: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_tracepoint_probes.py)
 * that registers two probes on tracepoints it finds with for_each_kernel_tracepoint:
 *
 *   owned_tp=<name>: pg_tp_owned_probe, a function of this module (a legitimate probe: scan
 *     names it with its module and does not flag it);
 *   stub_tp=<name>:  a stub copied into memory this module allocated itself (module_alloc),
 *     which no module owns: ENDBR64, then jmp *0(%rip) on to pg_tp_hidden_probe. scan must
 *     name it "memory of no listed module", never the module whose memory lies below it.
 *
 *   alloc=<address of module_alloc>, set_x=<address of set_memory_x> (neither is exported)
 *   hide_file=<name>: every read of a seq_file of that name (tracefs set_event), by every
 *     process, ends at once (a kretprobe on seq_read_iter() turns it into end of file, as
 *     pg_ops_filter does for enabled_functions): the text view then hides every trace event
 *     that is on, while their probes stay in the tracepoints' funcs in memory.
 *   unlist=1: also take itself off the module list (list_del, as pg_hide_module does; its
 *     /sys/module entry stays): its own probe then runs in memory of a hidden module, which
 *     scan must name, with the views that do not list it. Such a module cannot be removed.
 *
 * Both probes only count their calls. rmmod unregisters both and waits for their callers; the
 * stub's page is left allocated (the lab guest is thrown away after the run).
 */
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>
#include <linux/tracepoint.h>

#define KERNEL_MIN 0xffffffff80000000UL

typedef void *(*pg_alloc_t)(unsigned long size);
typedef int (*pg_set_x_t)(unsigned long addr, int numpages);

static char *owned_tp = "sched_process_fork";
static char *stub_tp = "sched_process_exec";
module_param(owned_tp, charp, 0444);
module_param(stub_tp, charp, 0444);
static unsigned long alloc, set_x;
module_param(alloc, ulong, 0444);
module_param(set_x, ulong, 0444);
static bool unlist;
module_param(unlist, bool, 0444);
static char hide_file[32];
module_param_string(hide_file, hide_file, sizeof(hide_file), 0444);
static unsigned long cut;
module_param(cut, ulong, 0444);
MODULE_PARM_DESC(cut, "reads of hide_file turned into end of file");
static bool probed;
static unsigned long owned_calls, hidden_calls, stub_address;
module_param(owned_calls, ulong, 0444);
module_param(hidden_calls, ulong, 0444);
module_param(stub_address, ulong, 0444);
MODULE_PARM_DESC(stub_address, "where the stub registered on stub_tp lies");

static struct tracepoint *owned, *stubbed;
static void *stub;

struct pg_wanted {
	const char *name;
	struct tracepoint **found;
};

static void pg_find(struct tracepoint *tp, void *priv)
{
	struct pg_wanted *w = priv;

	if (!strcmp(tp->name, w->name))
		*w->found = tp;
}

static struct tracepoint *pg_tracepoint(const char *name)
{
	struct tracepoint *found = NULL;
	struct pg_wanted w = { name, &found };

	for_each_kernel_tracepoint(pg_find, &w);
	return found;
}

/* Called with the tracepoint's arguments after data; x86-64 ignores the ones not declared. */
static noinline void pg_tp_owned_probe(void *data)
{
	WRITE_ONCE(owned_calls, READ_ONCE(owned_calls) + 1);
}

static noinline void pg_tp_hidden_probe(void *data)
{
	WRITE_ONCE(hidden_calls, READ_ONCE(hidden_calls) + 1);
}

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
	    !strcmp(file->f_path.dentry->d_name.name, hide_file)) {
		regs_set_return_value(regs, 0);
		WRITE_ONCE(cut, READ_ONCE(cut) + 1);
	}
	return 0;
}

static struct kretprobe pg_read_probe = {
	.kp.symbol_name = "seq_read_iter",
	.entry_handler = pg_entry,
	.handler = pg_return,
	.data_size = sizeof(struct pg_call),
	.maxactive = 64,
};

static int pg_make_stub(void)
{
	static const u8 endbr64[4] = { 0xf3, 0x0f, 0x1e, 0xfa };
	unsigned long hook = (unsigned long)pg_tp_hidden_probe;
	u8 *code = ((pg_alloc_t)alloc)(PAGE_SIZE);

	if (!code)
		return -ENOMEM;
	memcpy(code, endbr64, 4);
	/* jmp *0(%rip); .quad pg_tp_hidden_probe */
	code[4] = 0xff;
	code[5] = 0x25;
	memset(code + 6, 0, 4);
	memcpy(code + 10, &hook, 8);
	((pg_set_x_t)set_x)((unsigned long)code, 1);
	stub = code;
	stub_address = (unsigned long)code;
	return 0;
}

static int __init pg_tp_probe_init(void)
{
	int err;

	if (alloc < KERNEL_MIN || set_x < KERNEL_MIN) {
		pr_err("pg_tp_probe: alloc and set_x must be kernel addresses\n");
		return -EINVAL;
	}
	owned = pg_tracepoint(owned_tp);
	stubbed = pg_tracepoint(stub_tp);
	if (!owned || !stubbed || owned == stubbed) {
		pr_err("pg_tp_probe: no tracepoints %s and %s\n", owned_tp, stub_tp);
		return -ENOENT;
	}
	err = pg_make_stub();
	if (err)
		return err;
	err = tracepoint_probe_register(owned, pg_tp_owned_probe, NULL);
	if (err)
		return err;
	err = tracepoint_probe_register(stubbed, stub, NULL);
	if (err) {
		tracepoint_probe_unregister(owned, pg_tp_owned_probe, NULL);
		return err;
	}
	if (hide_file[0]) {
		err = register_kretprobe(&pg_read_probe);
		if (err) {
			tracepoint_probe_unregister(stubbed, stub, NULL);
			tracepoint_probe_unregister(owned, pg_tp_owned_probe, NULL);
			return err;
		}
		probed = true;
	}
	pr_info("pg_tp_probe: probes on %s (module) and %s (stub at %px)\n", owned_tp, stub_tp,
		stub);
	if (unlist)
		list_del(&THIS_MODULE->list);
	return 0;
}

static void __exit pg_tp_probe_exit(void)
{
	if (probed)
		unregister_kretprobe(&pg_read_probe);
	tracepoint_probe_unregister(stubbed, stub, NULL);
	tracepoint_probe_unregister(owned, pg_tp_owned_probe, NULL);
	tracepoint_synchronize_unregister();
	pr_info("pg_tp_probe: probes removed\n");
}

module_init(pg_tp_probe_init);
module_exit(pg_tp_probe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: a tracepoint probe in memory of no module");
