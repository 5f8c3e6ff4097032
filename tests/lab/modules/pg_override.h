/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the lab's kprobe rootkits share: make the probed function return at once with a value
 * of their choosing, the way bpf_override_return does (arch/x86/lib/error-inject.c is not
 * exported): the handler sets the return value and points regs->ip at a bare return, so the
 * function's own code never runs and its caller gets the value. The pre_handler then returns
 * 1 (kprobes: "I changed ip, do not single-step").
 */
#ifndef PG_OVERRIDE_H
#define PG_OVERRIDE_H

#include <linux/linkage.h>
#include <linux/ptrace.h>

void pg_just_return(void);

asm(".text\n"
    ".type pg_just_return, @function\n"
    ".globl pg_just_return\n"
    "pg_just_return:\n\t"
    ASM_RET
    ".size pg_just_return, .-pg_just_return\n");

static inline int pg_override(struct pt_regs *regs, unsigned long value)
{
	regs->ax = value;
	regs->ip = (unsigned long)pg_just_return;
	return 1;
}

#endif
