// SPDX-License-Identifier: GPL-2.0
/*
 * pg_nf_hook: a test rootkit of patchguard's kernel lab (tests/lab/test_lab_hiding_and_entry.py).
 * A netfilter hook registered from a module, the way rootkits watch for magic packets (a
 * backdoor trigger) or hide traffic: nf_register_net_hook() on IPv4 LOCAL_IN in the initial
 * network namespace. This one counts packets and accepts them all.
 *
 *   insmod pg_nf_hook.ko [hide=1]
 *
 * With hide=1 it also takes itself off the module list and out of sysfs (as pg_hide_module
 * does): the hook stays registered, but no listed module holds its function, so the kernel's
 * hook dump (`nft list hooks`) can only print its raw address. Hidden, it cannot be unloaded.
 */
#include <linux/kobject.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <net/net_namespace.h>

static bool hide;
module_param(hide, bool, 0444);
MODULE_PARM_DESC(hide, "take the module off the module list and out of sysfs once hooked");

static unsigned long packets;
module_param(packets, ulong, 0444);
MODULE_PARM_DESC(packets, "how many packets the hook saw");

static unsigned int pg_nf_input(void *priv, struct sk_buff *skb,
				const struct nf_hook_state *state)
{
	WRITE_ONCE(packets, READ_ONCE(packets) + 1);
	return NF_ACCEPT;
}

static struct nf_hook_ops pg_nf_ops = {
	.hook = pg_nf_input,
	.pf = NFPROTO_IPV4,
	.hooknum = NF_INET_LOCAL_IN,
	.priority = NF_IP_PRI_FIRST + 7,
};

static int __init pg_nf_hook_init(void)
{
	int err = nf_register_net_hook(&init_net, &pg_nf_ops);

	if (err)
		return err;
	if (hide) {
		list_del(&THIS_MODULE->list);
		kobject_del(&THIS_MODULE->mkobj.kobj);
	}
	pr_info("pg_nf_hook: %ps on ipv4 input%s\n", pg_nf_input, hide ? ", module hidden" : "");
	return 0;
}

static void __exit pg_nf_hook_exit(void)
{
	nf_unregister_net_hook(&init_net, &pg_nf_ops);
}

module_init(pg_nf_hook_init);
module_exit(pg_nf_hook_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchguard lab test rootkit: a netfilter hook, optionally from a hidden module");
