/* The flash controller as a DMA engine that runs while the CPU computes.
 *
 * PROMPT: mode, flash address, length, spin. The program paints the arena's first `length`
 * bytes with 0xA5, starts a READ of `length` bytes into it, reads STATUS once, sums the
 * destination while the transfer is in flight, spins `spin` loop iterations (its "compute"),
 * then polls STATUS until DONE and sums the destination again. One UART line:
 *   "first=XXXXXXXX during=D polls=P after=D crc=XXXXXXXX\n"
 * mode 1: also writes FLASHCTL.CMD again while the first transfer is in flight (a bus error);
 * mode 2: FLASHCTL.ADDR (likewise).
 */
#include "board_test.h"

uint8_t arena[64u * 1024u] __attribute__((section(".arena"), aligned(8)));

static uint32_t sum(const volatile uint8_t* p, uint32_t n) {
    uint32_t s = 0;
    for (uint32_t i = 0; i < n; i++) s += p[i];
    return s;
}

int main(void) {
    uint32_t mode = PROMPT(0), addr = PROMPT(1), len = PROMPT(2), spin = PROMPT(3);
    volatile uint8_t* dst = arena;
    for (uint32_t i = 0; i < len; i++) dst[i] = 0xA5;
    TRACE_STAGE = 1;
    FLASHCTL_CRC_CTRL = CRC_RESET | CRC_ENABLE;
    barrier();
    FLASHCTL_ADDR = addr;
    FLASHCTL_DST = (uint32_t)(uintptr_t)arena;
    FLASHCTL_LEN = len;
    FLASHCTL_CMD = FLASH_CMD_READ;
    uint32_t first = FLASHCTL_STATUS;
    uint32_t during = sum(dst, len);
    if (mode == 1) FLASHCTL_CMD = FLASH_CMD_READ;
    if (mode == 2) FLASHCTL_ADDR = addr;
    for (volatile uint32_t i = 0; i < spin; i++) {
    }
    uint32_t polls = 1, status;
    while (!((status = FLASHCTL_STATUS) & FLASH_STATUS_DONE)) polls++;
    barrier();
    uint32_t after = sum(dst, len);
    TRACE_STAGE = TRACE_IDLE;
    put_str("first=");
    put_hex(first);
    put_str(" during=");
    put_dec(during);
    put_str(" polls=");
    put_dec(polls);
    put_str(" after=");
    put_dec(after);
    put_str(" crc=");
    put_hex(FLASHCTL_CRC_VALUE);
    put_char('\n');
    return status & FLASH_STATUS_ERROR ? EXIT_FLASH_ERROR : EXIT_OK;
}
