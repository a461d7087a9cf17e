/* Streams ranges of the flash into RAM through the DMA and the CRC unit.
 *
 * PROMPT: n, then n times (stage, flash address, length, destination; destination 0 =
 * the arena). For each read: TRACE.STAGE = stage, CRC reset + enable, DMA, then one UART
 * line "crc=XXXXXXXX sum=D\n": the CRC unit's value and the byte sum computed by the CPU
 * from RAM (so the bytes really landed there). A controller error ends the run with
 * EXIT_FLASH_ERROR (ARG0 status, ARG1 address, ARG2 length), as the firmware does.
 */
#include "board_test.h"

#ifndef ARENA_BYTES
#define ARENA_BYTES (64u * 1024u)
#endif
uint8_t arena[ARENA_BYTES] __attribute__((section(".arena"), aligned(8)));

__attribute__((noreturn)) void board_exit(uint32_t code);

__attribute__((noinline)) static uint32_t dma_read_crc(uint32_t addr, uint8_t* dst, uint32_t len) {
    FLASHCTL_CRC_CTRL = CRC_RESET | CRC_ENABLE;
    barrier();
    FLASHCTL_ADDR = addr;
    FLASHCTL_DST = (uint32_t)(uintptr_t)dst;
    FLASHCTL_LEN = len;
    FLASHCTL_CMD = FLASH_CMD_READ;
    uint32_t status;
    while (!((status = FLASHCTL_STATUS) & FLASH_STATUS_DONE)) {}
    barrier();
    if (status & FLASH_STATUS_ERROR) {
        SYSCTL_ARG0 = status;
        SYSCTL_ARG1 = addr;
        SYSCTL_ARG2 = len;
        board_exit(EXIT_FLASH_ERROR);
    }
    return FLASHCTL_CRC_VALUE;
}

int main(void) {
    uint32_t n = PROMPT(0);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t stage = PROMPT(1 + 4 * i), addr = PROMPT(2 + 4 * i), len = PROMPT(3 + 4 * i);
        uint8_t* dst = PROMPT(4 + 4 * i) ? (uint8_t*)(uintptr_t)PROMPT(4 + 4 * i) : arena;
        TRACE_STAGE = stage;
        uint32_t crc = dma_read_crc(addr, dst, len);
        uint32_t sum = 0;
        for (uint32_t j = 0; j < len; j++) sum += dst[j];
        put_str("crc=");
        put_hex(crc);
        put_str(" sum=");
        put_dec(sum);
        put_char('\n');
    }
    TRACE_STAGE = TRACE_IDLE;
    return EXIT_OK;
}
