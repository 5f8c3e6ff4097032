// SPDX-License-Identifier: GPL-2.0
/*
 * list_tasks: a BPF task iterator that prints "tgid pid comm" for every task in the kernel's
 * task list, read back with `cat /sys/fs/bpf/list_tasks`. A process list that does not go
 * through /proc (nor through a getdents hook that hides entries from it), to compare with ps.
 *
 * The program that bpftool-list-tasks.toml declares. Built and pinned with Debian 12's clang
 * and bpftool, nothing else (no libbpf headers, no vmlinux.h: the kernel types it reads are
 * declared below with preserve_access_index, and libbpf relocates their fields against the
 * running kernel's BTF):
 *
 *   clang -O2 -g -target bpf -c bpftool-list-tasks.bpf.c -o list_tasks.bpf.o
 *   bpftool iter pin list_tasks.bpf.o /sys/fs/bpf/list_tasks
 *   cat /sys/fs/bpf/list_tasks
 *   rm /sys/fs/bpf/list_tasks          # the pin is all that keeps it: this unloads it
 */

#define SEC(name) __attribute__((section(name), used))
#define CORE __attribute__((preserve_access_index))

typedef unsigned int __u32;
typedef unsigned long long __u64;

struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
	__u64 session_id;
	__u64 seq_num;
} CORE;

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
} CORE;

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} CORE;

/* BPF_FUNC_seq_printf, from include/uapi/linux/bpf.h */
static long (*bpf_seq_printf)(struct seq_file *m, const char *fmt, __u32 fmt_size,
			      const void *data, __u32 data_len) = (void *)126;

SEC("iter/task")
int list_tasks(struct bpf_iter__task *ctx)
{
	static const char header[] = "tgid pid comm\n";
	static const char line[] = "%d %d %s\n";
	struct seq_file *seq = ctx->meta->seq;
	struct task_struct *task = ctx->task;
	__u64 args[3];

	if (ctx->meta->seq_num == 0)
		bpf_seq_printf(seq, header, sizeof(header), 0, 0);
	if (!task)
		return 0; /* the end of the list */
	args[0] = task->tgid;
	args[1] = task->pid;
	args[2] = (__u64)task->comm;
	bpf_seq_printf(seq, line, sizeof(line), args, sizeof(args));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
