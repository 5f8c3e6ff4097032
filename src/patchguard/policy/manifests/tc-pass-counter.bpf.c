// A tc classifier of the kind network teams attach with `tc filter add ... bpf da obj`: it
// counts every packet on the device's ingress in a one-slot array map and lets it pass.
// Built with `clang -O2 -g -target bpf -c tc-pass-counter.bpf.c` (the live corpus test does);
// tc-pass-counter.toml declares what tc leaves in the kernel.
#include <linux/bpf.h>
#include <linux/pkt_cls.h>

#define SEC(name) __attribute__((section(name), used))

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;

/* A BTF-defined map, as libbpf (which tc loads objects with) wants it; the macros of libbpf's
 * bpf_helpers.h written out, so that no libbpf headers are needed. */
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tc_packets SEC(".maps");

SEC("classifier")
int tc_pass_count(struct __sk_buff *skb)
{
	__u32 slot = 0;
	__u64 *packets = bpf_map_lookup_elem(&tc_packets, &slot);

	if (packets)
		__sync_fetch_and_add(packets, 1);
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
