/* Shared by the board's test programs: mailbox access and tiny UART formatting. */
#ifndef BOARD_TEST_H
#define BOARD_TEST_H

#include <stdint.h>
#include "memory_map.h"

#define MAILBOX(name) REG32(MAILBOX_BASE + MAILBOX_##name##_OFFSET)
#define PROMPT(i) REG32(MAILBOX_BASE + MAILBOX_PROMPT_OFFSET + 4u * (uint32_t)(i))

/* The DMA writes RAM behind the compiler's back: order RAM accesses around it. */
static inline void barrier(void) { __asm__ volatile("dsb" ::: "memory"); }

static inline void put_char(char c) { UART_DATA = (uint8_t)c; }

static inline void put_str(const char* s) {
    while (*s) put_char(*s++);
}

static inline void put_hex(uint32_t v) {
    for (int shift = 28; shift >= 0; shift -= 4) put_char("0123456789abcdef"[(v >> shift) & 0xFu]);
}

static inline void put_dec(uint32_t v) {
    char digits[10];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n) put_char(digits[--n]);
}

#endif
